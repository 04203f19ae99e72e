"""A gold-free over-optimisation guard: signals from each held-out evaluation, and an alarm rule.

Nothing here sees the gold. At every evaluation the guard reads what a deployment has: each proxy member's
score of every sample, the samples' text, KL from pi_0 and the samples' perplexity under pi_0. Signals
(all relative to the run's own first evaluation, i.e. pi_0, so they need no task-specific scale):

  disagreement       mean over samples of the std across members of member-normalised scores (each member
                     z-scored by its own mean/std on pi_0's samples), Coste et al.'s uncertainty
  rank_agreement     mean pairwise Spearman correlation of the members' scores over the samples
  gain_per_kl        proxy gain per nat of KL since the previous evaluation (diminishing returns)
  gain_per_kl_ratio  that, over its mean on the first evaluations that moved (the run's early rate)
  distinct2_ratio    distinct-2 of the samples (unique word bigrams / bigrams) over pi_0's
  ppl_ratio          perplexity under pi_0 over pi_0's own (text collapsing onto frequent phrases drops it)
  repetition         fraction of repeated word 3-grams within a sample, averaged
  proxy_fit_beta     beta of Gao et al.'s RL form fitted online to proxy gain vs d = sqrt(KL)

The rule (``GuardRule``): after KL from pi_0 exceeds ``min_kl``, raise the alarm at the first evaluation
where the chosen signal has crossed its threshold (below it for the ratios and rank agreement, above for
disagreement) on ``patience`` consecutive evaluations. Thresholds are calibrated on one set of seeds and
graded on another (services/experiments/guard_grade.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from learner.analysis.claims import distinct_n  # noqa: E402,F401 - one definition of distinct-n (also used here by name)
from learner.config.run import GUARD_SIGNALS as SIGNALS  # noqa: E402 - the config's list of signals is this module's
# the direction in which a signal warns: "below" = an alarm when it falls under the threshold
DIRECTION = {"disagreement": "above", "rank_agreement": "below", "gain_per_kl": "below", "gain_per_kl_ratio": "below",
             "distinct2_ratio": "below", "ppl_ratio": "below", "repetition": "above", "proxy_fit_beta": "above"}


def repetition(texts: Sequence[str]) -> float:
    """Mean over texts of the fraction of word 3-grams that repeat an earlier 3-gram of the same text."""
    vals = []
    for t in texts:
        w = t.split()
        g = [tuple(w[i : i + 3]) for i in range(len(w) - 2)]
        if g:
            vals.append(1.0 - len(set(g)) / len(g))
    return float(np.mean(vals)) if vals else 0.0


def rank_agreement(members: np.ndarray) -> float:
    """Mean pairwise Spearman correlation between members' scores (L samples, k members); nan with k < 2."""
    L, k = members.shape
    if k < 2 or L < 3:
        return math.nan
    from scipy.stats import rankdata

    r = rankdata(members, axis=0)  # ties share their mean rank
    r = (r - r.mean(axis=0)) / np.maximum(r.std(axis=0), 1e-12)
    c = (r.T @ r) / L  # (k, k)
    return float(c[np.triu_indices(k, 1)].mean())


@dataclass
class GuardRef:
    """The run's pi_0 reference, from its first evaluation."""

    member_mean: np.ndarray
    member_std: np.ndarray
    distinct2: float
    ppl: float
    proxy: float


@dataclass
class GuardRule:
    """Alarm when ``signal`` crosses ``threshold`` (in its warning direction) on ``patience`` consecutive evaluations,
    once KL from pi_0 is above ``min_kl``."""

    signal: str = "distinct2_ratio"
    threshold: float = 0.75
    patience: int = 1
    min_kl: float = 1.0

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"guard signal {self.signal!r} is not one of {', '.join(SIGNALS)}")
        if self.patience < 1:
            raise ValueError(f"guard patience must be >= 1, got {self.patience}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"guard threshold must be finite, got {self.threshold}")

    def warns(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value < self.threshold if DIRECTION[self.signal] == "below" else value > self.threshold

    def describe(self) -> str:
        op = "<" if DIRECTION[self.signal] == "below" else ">"
        return (f"{self.signal} {op} {self.threshold:.3g} on {self.patience} consecutive evaluation(s), "
                f"once KL from pi_0 > {self.min_kl:g}")


@dataclass
class Guard:
    """Feed it every evaluation in order (``update``); it returns that evaluation's signals and whether the alarm
    is raised (it stays raised). ``alarm_step`` is the step of the first alarm."""

    rule: GuardRule = field(default_factory=GuardRule)
    early_evals: int = 3  # evaluations that moved, averaged into the early gain-per-KL rate
    ref: GuardRef | None = None
    history: list[dict] = field(default_factory=list)
    alarm_step: int | None = None

    def update(self, step: int, members: np.ndarray, texts: Sequence[str], kl: float, ppl: float | None = None) -> dict:
        """members: (L, k) each proxy member's score of each of the L samples; texts: the L responses; kl: KL from pi_0
        of this evaluation; ppl: the samples' perplexity under pi_0 (None if not measured)."""
        members = np.atleast_2d(np.asarray(members, dtype=np.float64))
        if members.ndim != 2 or members.shape[0] != len(texts) or members.shape[0] == 0:
            raise ValueError(f"members must be (L, k) with L = len(texts) = {len(texts)} > 0, got {members.shape}")
        if not np.all(np.isfinite(members)):
            raise ValueError("proxy member scores must be finite")
        ppl = math.nan if ppl is None else float(ppl)
        d2 = distinct_n(texts, 2)
        proxy = float(members.mean())
        if self.ref is None:
            self.ref = GuardRef(members.mean(axis=0), np.maximum(members.std(axis=0), 1e-6), d2, ppl, proxy)
        ref = self.ref
        z = (members - ref.member_mean) / ref.member_std
        s = {
            "disagreement": float(z.std(axis=1).mean()) if members.shape[1] > 1 else math.nan,
            "rank_agreement": rank_agreement(members),
            "distinct2": d2,
            "distinct2_ratio": d2 / ref.distinct2 if ref.distinct2 > 0 else math.nan,
            "ppl_ratio": ppl / ref.ppl if math.isfinite(ppl) and ref.ppl and math.isfinite(ref.ppl) else math.nan,
            "repetition": repetition(texts),
            "proxy": proxy,
            "kl": float(kl),
        }
        prev = self.history[-1] if self.history else None
        dk = float(kl) - prev["kl"] if prev else 0.0
        s["gain_per_kl"] = (proxy - prev["proxy"]) / dk if prev and dk > 0.05 else math.nan
        early = [h["gain_per_kl"] for h in self.history if math.isfinite(h.get("gain_per_kl", math.nan))][: self.early_evals]
        base = float(np.mean(early)) if len(early) == self.early_evals else math.nan
        s["gain_per_kl_ratio"] = s["gain_per_kl"] / base if math.isfinite(base) and base > 0 else math.nan
        s["proxy_fit_beta"] = self._fit_beta([*self.history, s])
        s["step"] = int(step)
        if self.alarm_step is None:
            i = first_alarm([*self.history, s], self.rule)
            if i is not None:
                self.alarm_step = int(step)
        s["alarm"] = self.alarm_step is not None
        self.history.append(s)
        return s

    def _fit_beta(self, hist: list[dict]) -> float:
        from learner.analysis.scaling_laws import fit_rl

        pts = [(h["kl"], h["proxy"] - hist[0]["proxy"]) for h in hist[1:] if h["kl"] > 0]
        if len(pts) < 4:
            return math.nan
        kl, r = np.array(pts).T
        try:
            return float(fit_rl(np.sqrt(kl), r).beta)
        except (ValueError, np.linalg.LinAlgError):
            return math.nan

    def metrics(self) -> dict[str, float]:
        """The latest signals as slash-namespaced metrics (guard/...)."""
        if not self.history:
            return {}
        h = self.history[-1]
        out = {f"guard/{k}": float(h[k]) for k in (*SIGNALS, "distinct2") if math.isfinite(h.get(k, math.nan))}
        out["guard/alarm"] = 1.0 if h["alarm"] else 0.0
        return out

    def as_dict(self) -> dict:
        """What a run folder keeps (guard.json): the rule, the reference, every evaluation's signals, the alarm."""
        ref = None if self.ref is None else {"member_mean": self.ref.member_mean.tolist(), "member_std": self.ref.member_std.tolist(),
                                              "distinct2": self.ref.distinct2, "ppl": self.ref.ppl, "proxy": self.ref.proxy}
        return {"rule": asdict(self.rule), "alarm_step": self.alarm_step, "ref": ref,
                "history": [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in h.items()} for h in self.history]}

    def restore(self, state: dict, *, before_step: int) -> None:
        """Continue from a saved ``as_dict`` (a resumed run): keep the evaluations before ``before_step`` (those from
        ``before_step`` on are about to be redone) and the reference; the alarm only if it came before."""
        self.history = [{k: (math.nan if v is None else v) for k, v in h.items()} for h in state.get("history", []) if h["step"] < before_step]
        r = state.get("ref")
        self.ref = None if r is None or not self.history else GuardRef(np.asarray(r["member_mean"]), np.asarray(r["member_std"]),
                                                                       r["distinct2"], math.nan if r["ppl"] is None else r["ppl"], r["proxy"])
        a = state.get("alarm_step")
        self.alarm_step = a if a is not None and a < before_step else None
        for h in self.history:
            h["alarm"] = self.alarm_step is not None and h["step"] >= self.alarm_step

    def rearm(self) -> None:
        """After a reset: the next alarm needs fresh warnings."""
        self.alarm_step = None
        for h in self.history:
            h["rearmed"] = True



def first_alarm(rows: Sequence[dict], rule: GuardRule) -> int | None:
    """Index of the evaluation at which ``rule`` raises the alarm over signal rows in order (Guard.update's
    output), or None: the first index ending ``rule.patience`` consecutive warnings, each at KL > rule.min_kl."""
    streak = 0
    for i, r in enumerate(rows):
        if r.get("rearmed"):  # warnings before a reset do not count after it
            streak = 0
            continue
        if r["kl"] > rule.min_kl and rule.warns(float(r.get(rule.signal, math.nan))):
            streak += 1
            if streak >= rule.patience:
                return i
        else:
            streak = 0
    return None
