"""The claim model: a claim's arms, statistic and threshold, evaluated to a row (effect, 95% interval, verdict), and
the statistics the catalogue's claims use (frontier gaps, differences of arm means, the RL form's fit)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from learner.analysis import claims as C


@dataclass
class Claim:
    paper: str
    claim: str
    measure: str
    arms: dict[str, list]  # arm -> RunCurves (sweep claims) or arrays (best-of-n)
    stat: Callable | None
    threshold: float = 0.0
    direction: str = "above"  # the claim: effect above / below threshold
    margin: float | None = None  # equivalence claims: |effect| < margin
    paired: bool = False  # best-of-n: resample prompts of one sample set
    prompts: bool = True
    details: dict[str, float] = field(default_factory=dict)
    missing: str | None = None
    unit: str = ""
    parts: Callable | None = None  # the measured data -> {what: value} shown beside the effect (each arm's own value)

    def evaluate(self, n_boot: int, seed: int) -> dict:
        row = {"paper": self.paper, "claim": self.claim, "measure": self.measure, "threshold": self.threshold,
               "direction": self.direction, "margin": self.margin, "details": self.details, "unit": self.unit}
        if self.missing:
            return {**row, "verdict": "not measured", "why": self.missing}
        if self.paired:
            est = C.bootstrap_paired(self.stat, self.arms, n_boot=n_boot, seed=seed)
        else:
            est = C.bootstrap(self.stat, self.arms, n_boot=n_boot, seed=seed, prompts=self.prompts)
        v = C.equivalence_verdict(est, margin=self.margin) if self.margin is not None else C.verdict(est, threshold=self.threshold,
                                                                                                    direction=self.direction)
        parts = self.parts or getattr(self.stat, "parts", None)
        if parts is not None:
            data = self.arms if self.paired else {a: [r.view() for r in runs] for a, runs in self.arms.items()}
            try:
                row["details"] = {**self.details, **{k: C._num(float(x)) for k, x in parts(data).items()}}
            except (ValueError, ZeroDivisionError):
                pass
        return {**row, "effect": est.as_dict(), "verdict": v}


MIN_SEEDS = 3


def _need(arms: dict[str, list], stage: str, unreadable: int = 0) -> str | None:
    """Why a claim cannot be measured yet (an arm with fewer than MIN_SEEDS finished runs), or None; ``unreadable``:
    how many finished run folders could not be read (so far), named in the reason."""
    short = [f"{a} ({len(r)})" for a, r in arms.items() if len(r) < MIN_SEEDS]
    if not short:
        return None
    bad = f"; {unreadable} finished run folder(s) could not be read, listed at the end of claims.md" if unreadable else ""
    return (f"fewer than {MIN_SEEDS} finished seeds for {', '.join(short)}: run `tether reproduce --only {stage}` "
            f"(it continues where the stage stopped){bad}")


class _Gap:
    """Frontier of arm a minus arm b (``what``: gold | proxy); ``parts``: each arm's mean frontier and the KL range."""

    def __init__(self, a: str, b: str, what: str):
        self.a, self.b, self.what = a, b, what

    def __call__(self, s) -> float:
        return C.frontier_gap(s[self.a], s[self.b], what=self.what)

    def parts(self, s) -> dict:
        grid = C.kl_grid([*s[self.a], *s[self.b]])
        return {f"{self.a} {self.what} frontier": C.frontier_mean(s[self.a], grid, what=self.what),
                f"{self.b} {self.what} frontier": C.frontier_mean(s[self.b], grid, what=self.what), "KL range up to": float(grid[-1])}


class _Diff:
    """mean over arm a's runs of f minus arm b's; ``parts``: each arm's value and its final KL from pi_0."""

    def __init__(self, a: str, b: str, f):
        self.a, self.b, self.f = a, b, f

    def __call__(self, s) -> float:
        return C.arm_mean(s[self.a], self.f) - C.arm_mean(s[self.b], self.f)

    def parts(self, s) -> dict:
        out = {self.a: C.arm_mean(s[self.a], self.f), self.b: C.arm_mean(s[self.b], self.f)}
        for arm in (self.a, self.b):
            out[f"{arm} final KL"] = C.arm_mean(s[arm], lambda v: C.final(v.kl))
        return out


class _LossAtKL:
    """Gold lost after the peak up to the KL from pi_0 that every run of both arms reached, arm a minus arm b;
    ``parts``: each arm's loss and that KL."""

    def __init__(self, a: str, b: str):
        self.a, self.b = a, b

    def _losses(self, s) -> tuple[float, float, float]:
        k = C.common_kl([*s[self.a], *s[self.b]])
        la, lb = (C.arm_mean(s[x], lambda v: C.loss_after_peak_to_kl(v.kl, v.gold, k)) for x in (self.a, self.b))
        return la, lb, k

    def __call__(self, s) -> float:
        la, lb, _ = self._losses(s)
        return la - lb

    def parts(self, s) -> dict:
        la, lb, k = self._losses(s)
        return {self.a: la, self.b: lb, "common KL": k}


def _overopt(v: C.RunView):
    from learner.analysis.overopt import peak_and_fall

    return peak_and_fall(v.run.steps, v.gold, v.proxy, v.kl)


def _fall(v: C.RunView) -> float:
    return _overopt(v).fall_fraction


def _overopt_parts(arm: str):
    from learner.analysis.overopt import peak_and_fall

    def parts(s):
        o = [peak_and_fall(v.run.steps, v.gold, v.proxy, v.kl) for v in s[arm]]
        return {"gold at pi_0": np.mean([x.initial for x in o]), "gold peak": np.mean([x.peak for x in o]),
                "final gold": np.mean([x.final for x in o]), "peak iteration": np.mean([x.peak_step for x in o]),
                "KL at peak": np.mean([x.kl_at_peak for x in o]), "proxy at peak": np.mean([x.proxy_at_peak for x in o]),
                "final proxy": np.mean([x.proxy_final for x in o])}
    return parts


class RLForm:
    """Gao et al.'s RL form R(d) = d(alpha - beta log d) fitted to one arm's runs pooled over seeds: its R^2 and its
    predicted peak as statistics, and the values shown beside them (``parts``). The fit to the runs as measured is made
    once and shared by every claim on the arm (their point estimates and parts); a bootstrap resample is fitted anew."""

    def __init__(self, arm: str, runs: list[C.RunCurve]):
        self.arm, self.runs = arm, runs
        self._measured = None

    def _is_measured(self, views: list[C.RunView]) -> bool:
        return len(views) == len(self.runs) and all(v.run is r and np.array_equal(v.gold, r.gold.mean(axis=1))
                                                    for v, r in zip(views, self.runs))

    def fit(self, s):
        """The RLFit (learner.analysis.rl_fits) of the arm's runs in ``s``."""
        from learner.analysis.rl_fits import fit_rl_runs

        views = s[self.arm]
        if not self._is_measured(views):
            return fit_rl_runs([(v.kl, v.gold) for v in views])
        if self._measured is None:
            self._measured = fit_rl_runs([(v.kl, v.gold) for v in views])
        return self._measured

    def r2(self, s) -> float:
        fit = self.fit(s).fit
        if fit is None:
            raise ValueError("no fit")
        return fit.r2

    def peak_log_ratio(self, s) -> float:
        """log(predicted peak KL / observed peak KL), the observed peak on the 3-point moving average, mean over runs."""
        from learner.analysis.overopt import smooth3

        fit = self.fit(s).fit
        if fit is None or fit.peak_d is None or not fit.peak_d > 0:
            raise ValueError("no peak")
        observed = np.mean([v.kl[int(np.argmax(smooth3(v.gold)))] for v in s[self.arm]])
        return math.log(fit.peak_d**2 / observed)

    def parts(self, s) -> dict:
        from learner.analysis.overopt import smooth3

        fit = self.fit(s).fit
        out = {"observed peak KL": float(np.mean([v.kl[int(np.argmax(smooth3(v.gold)))] for v in s[self.arm]]))}
        if fit is not None:
            out.update({"alpha": fit.alpha, "beta": fit.beta, "R^2": fit.r2,
                        "predicted peak KL": fit.peak_d**2 if fit.peak_d is not None else math.nan})
        return out


# -- the statistics the catalogue (configs/reproduce/claims.yaml) names ------------------------------------------------
RUN_VALUES: dict[str, Callable[[C.RunView], float]] = {  # diff's `of`: one value per run, averaged over an arm's runs
    "loss_after_peak": lambda v: C.loss_after_peak(v.gold),
    "final_gold": lambda v: C.final(v.gold),
    "final_proxy": lambda v: C.final(v.proxy),
    "distinct_2": lambda v: C.distinct_n(v.run.texts, 2),
    "final_log_ppl": lambda v: math.log(C.final(v.run.extra["ppl_under_init"])),
    "peak_gold": lambda v: _overopt(v).peak,  # the peak of the 3-point moving average of gold
    "kl_at_peak": lambda v: _overopt(v).kl_at_peak,  # KL from pi_0 at that peak
}
STATS = {"fall": 1, "rl_r2": 1, "rl_peak_log_ratio": 1, "gap": 2, "diff": 2, "loss_at_kl": 2}  # statistic -> how many arms
OF = {"gap": ("gold", "proxy"), "diff": tuple(RUN_VALUES)}  # the statistics that take an `of`, and its values
def statistic(kind: str, arms: list[str], of: str | None = None, *, rl: RLForm | None = None) -> Callable:
    """The statistic ``kind`` of the catalogue on ``arms`` (a statistic of two arms is the first minus the second);
    ``rl``: the first arm's RL-form fit, for rl_r2 and rl_peak_log_ratio."""
    if kind == "fall":
        arm = arms[0]
        return lambda s: C.arm_mean(s[arm], _fall)
    if kind == "rl_r2":
        return rl.r2
    if kind == "rl_peak_log_ratio":
        return rl.peak_log_ratio
    if kind == "gap":
        return _Gap(arms[0], arms[1], of)
    if kind == "diff":
        return _Diff(arms[0], arms[1], RUN_VALUES[of])
    if kind == "loss_at_kl":
        return _LossAtKL(arms[0], arms[1])
    raise ValueError(f"unknown statistic {kind!r}; known: {', '.join(STATS)}")


def measured_parts(kind: str, arm: str, *, rl: RLForm | None = None) -> Callable:
    """The measured values ``kind`` (overopt: the peak and fall; rl: the RL form's fit) of ``arm`` shown beside a claim's effect."""
    return _overopt_parts(arm) if kind == "overopt" else rl.parts
