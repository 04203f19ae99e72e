"""Claims measured with confidence intervals: effect sizes over runs, a two-level bootstrap, verdicts.

A run is a sequence of held-out evaluations (``RunCurve``): at each one the gold and proxy score of every
sample (the same prompts at every evaluation of a run), and KL from pi_0. A claim's effect is a statistic of
one or more *arms* (lists of runs, one per seed), e.g. "mean gold over the KL frontier of Elastic Reset minus
that of PPO + KL". Its 95% interval comes from a two-level bootstrap that resamples both sources of noise:

  1. per arm, the runs (seeds) with replacement;
  2. within each drawn run, its eval prompts with replacement (the same draw for every evaluation of that
     run, so a run's curve keeps its shape; samples that share a prompt move together).

KL per evaluation is a run-level measurement and is not resampled. The verdict compares the interval with
the claim's threshold: ``holds`` if the whole interval lies on the claimed side, ``does not hold`` if it lies
wholly on the other side, else ``inconclusive``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from learner.analysis.overopt import smooth3

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass
class RunCurve:
    """One run's evaluations. gold, proxy: (M, L) per-sample scores at M evaluations of the same L samples'
    prompts; kl: (M,); groups: (L,) prompt index of each sample (samples of one prompt are resampled together);
    steps: (M,) iteration of each evaluation; extra: per-evaluation run-level series (M,), not resampled;
    texts: the responses of the last evaluation (for diversity)."""

    name: str
    seed: int
    steps: np.ndarray
    kl: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray
    groups: np.ndarray
    before_reset: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.float64)
        self.kl = np.asarray(self.kl, dtype=np.float64)
        self.gold = np.atleast_2d(np.asarray(self.gold, dtype=np.float64))
        self.proxy = np.atleast_2d(np.asarray(self.proxy, dtype=np.float64))
        self.groups = np.asarray(self.groups, dtype=np.int64)
        M, L = self.gold.shape
        if not (self.steps.shape == self.kl.shape == (M,) and self.proxy.shape == (M, L) and self.groups.shape == (L,)):
            raise ValueError(f"run {self.name}: steps {self.steps.shape}, kl {self.kl.shape}, gold {self.gold.shape}, proxy "
                             f"{self.proxy.shape}, groups {self.groups.shape} disagree (want (M,), (M,), (M, L), (M, L), (L,))")
        if M == 0 or L == 0:
            raise ValueError(f"run {self.name}: no evaluations or no samples")
        if not (np.all(np.isfinite(self.gold)) and np.all(np.isfinite(self.proxy)) and np.all(np.isfinite(self.kl))):
            raise ValueError(f"run {self.name}: gold, proxy and KL must be finite at every evaluation")
        if self.groups.min() < 0:
            raise ValueError(f"run {self.name}: prompt groups must be >= 0")
        if self.before_reset is None:
            self.before_reset = np.zeros(M, dtype=bool)
        for k, v in self.extra.items():
            self.extra[k] = np.asarray(v, dtype=np.float64)

    @property
    def n_prompts(self) -> int:
        return int(self.groups.max()) + 1

    def view(self, prompt_counts: np.ndarray | None = None) -> "RunView":
        """The run's mean curves, with samples weighted by how often their prompt was drawn (None = all once)."""
        if prompt_counts is None:
            return RunView(self, self.gold.mean(axis=1), self.proxy.mean(axis=1))
        w = np.asarray(prompt_counts, dtype=np.float64)[self.groups]  # (L,)
        s = w.sum()
        if s <= 0:
            raise ValueError("a prompt draw with no weight")
        return RunView(self, self.gold @ w / s, self.proxy @ w / s)


@dataclass
class RunView:
    """A run's mean gold and proxy at each evaluation (M,), under one prompt draw."""

    run: RunCurve
    gold: np.ndarray
    proxy: np.ndarray

    @property
    def kl(self) -> np.ndarray:
        return self.run.kl


Stat = Callable[[dict[str, list[RunView]]], float]


@dataclass
class Estimate:
    """A statistic on the data as measured (``point``) and its bootstrap percentile interval."""

    point: float
    lo: float
    hi: float
    n_boot: int
    n_runs: dict[str, int]

    def as_dict(self) -> dict:
        return {"point": _num(self.point), "lo": _num(self.lo), "hi": _num(self.hi), "n_boot": self.n_boot, "n_runs": self.n_runs}


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def bootstrap(stat: Stat, arms: dict[str, Sequence[RunCurve]], *, n_boot: int = 2000, seed: int = 0, prompts: bool = True,
              level: float = 0.95) -> Estimate:
    """``stat`` on every arm's runs as measured, and its two-level bootstrap interval (module docstring).

    Resamples where ``stat`` fails (a fit with too few points) count as NaN and are left out of the interval;
    if more than half fail the interval is NaN. ``prompts=False`` resamples seeds only (for statistics of
    the texts, e.g. distinct-n, which prompt weights do not reach)."""
    if not arms or any(len(r) == 0 for r in arms.values()):
        raise ValueError(f"every arm needs at least one run, got { {k: len(v) for k, v in arms.items()} }")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    point = _safe(stat, {a: [r.view() for r in runs] for a, runs in arms.items()})
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        sample: dict[str, list[RunView]] = {}
        for a, runs in arms.items():
            picks = rng.integers(0, len(runs), size=len(runs))
            sample[a] = [runs[i].view(rng.multinomial(runs[i].n_prompts, np.full(runs[i].n_prompts, 1.0 / runs[i].n_prompts))
                                      if prompts else None) for i in picks]
        vals[b] = _safe(stat, sample)
    ok = vals[np.isfinite(vals)]
    q = (1.0 - level) / 2.0
    if ok.size * 2 < n_boot:
        lo = hi = math.nan
    else:
        lo, hi = (float(x) for x in np.quantile(ok, [q, 1.0 - q]))
    return Estimate(point, lo, hi, n_boot, {a: len(r) for a, r in arms.items()})


def _safe(stat: Stat, sample: dict[str, list[RunView]]) -> float:
    try:
        v = float(stat(sample))
    except (ValueError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def verdict(est: Estimate, *, threshold: float = 0.0, direction: str = "above") -> str:
    """holds / does not hold / inconclusive for the claim "effect > threshold" (direction 'above') or
    "effect < threshold" ('below'), judged on the interval."""
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
    lo, hi = est.lo, est.hi
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if direction == "below":
        lo, hi, threshold = -hi, -lo, -threshold
    if lo > threshold:
        return HOLDS
    if hi < threshold:
        return FAILS
    return INCONCLUSIVE


def equivalence_verdict(est: Estimate, *, margin: float) -> str:
    """The claim "the effect is within +-margin" (e.g. similar fluency): holds if the whole interval lies inside,
    does not hold if it lies wholly outside, else inconclusive."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    lo, hi = est.lo, est.hi
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if -margin < lo and hi < margin:
        return HOLDS
    if lo > margin or hi < -margin:
        return FAILS
    return INCONCLUSIVE


# -- statistics of curves ------------------------------------------------------------------------------------
def frontier(kl: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The best y reached at KL <= g, for each g of ``grid`` (a run's reward-vs-drift frontier; a step function).
    Below the smallest KL of the run (its iteration-0 evaluation, at about 0), the value there."""
    kl, y, grid = (np.asarray(a, dtype=np.float64) for a in (kl, y, grid))
    if kl.shape != y.shape or kl.size == 0:
        raise ValueError(f"kl {kl.shape} and y {y.shape} must be one non-empty length")
    order = np.argsort(kl, kind="stable")
    ks, best = kl[order], np.maximum.accumulate(y[order])
    idx = np.searchsorted(ks, grid, side="right") - 1
    return best[np.clip(idx, 0, None)]


def kl_grid(views: Sequence[RunView], points: int = 50) -> np.ndarray:
    """0 .. the smallest largest-KL over the runs (``common_kl``): the range over which every run has a frontier."""
    return np.linspace(0.0, common_kl(views), points)


def frontier_mean(views: Sequence[RunView], grid: np.ndarray, *, what: str = "gold") -> float:
    """Mean over runs and over the KL grid of each run's frontier of ``what`` (gold | proxy)."""
    return float(np.mean([frontier(v.kl, getattr(v, what), grid).mean() for v in views]))


def frontier_gap(a: Sequence[RunView], b: Sequence[RunView], *, what: str = "gold", points: int = 50) -> float:
    """Mean frontier of arm a minus arm b, over KL from 0 to the smallest largest-KL of all their runs:
    "higher reward at equal KL from pi_0, over the frontier"."""
    grid = kl_grid([*a, *b], points)
    return frontier_mean(a, grid, what=what) - frontier_mean(b, grid, what=what)


def loss_after_peak(gold: np.ndarray, *, tail: int = 3) -> float:
    """Gold lost after its peak: the peak of the 3-point moving average minus the mean of the last ``tail``
    evaluations (>= 0 up to noise; 0 for a curve still at its peak)."""
    g = np.asarray(gold, dtype=np.float64)
    if g.size < tail:
        raise ValueError(f"need at least {tail} evaluations, got {g.size}")
    return float(smooth3(g).max() - g[-tail:].mean())


def common_kl(views: Sequence[RunView]) -> float:
    """The largest KL from pi_0 that every run reached: the smallest over the runs of its largest evaluated KL."""
    top = min(float(np.max(v.kl)) for v in views)
    if not top > 0:
        raise ValueError("no run moved from pi_0 (largest KL <= 0)")
    return top


def loss_after_peak_to_kl(kl: np.ndarray, gold: np.ndarray, k: float, *, min_evals: int = 3) -> float:
    """Gold lost after the peak by the time the run's KL from pi_0 reached ``k``, not by a fixed iteration (there, an
    arm that drifts slower, still near its peak at the horizon, is credited with losing less). On the 3-point moving
    average of gold: its peak over the evaluations made before KL first exceeded k, minus its value at KL k
    (interpolated between the evaluations on either side; the last one's when the run never went past k).
    ValueError when fewer than ``min_evals`` evaluations lie below k."""
    from learner.analysis.overopt import smooth3

    kl, g = np.asarray(kl, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if kl.shape != g.shape or kl.ndim != 1:
        raise ValueError(f"kl {kl.shape} and gold {g.shape} must be one length")
    if not math.isfinite(k):
        raise ValueError(f"k must be finite, got {k}")
    over = np.flatnonzero(~(kl <= k))  # a NaN KL counts as past the budget
    n = int(over[0]) if over.size else g.size
    if n < min_evals:
        raise ValueError(f"need at least {min_evals} evaluations below KL {k:g}, got {n}")
    s = smooth3(g)
    end = s[n - 1]
    if n < g.size and math.isfinite(kl[n]) and kl[n] > kl[n - 1]:
        end = s[n - 1] + (s[n] - s[n - 1]) * (k - kl[n - 1]) / (kl[n] - kl[n - 1])
    return float(s[:n].max() - end)


def final(y: np.ndarray, *, tail: int = 3) -> float:
    """The mean of the last ``tail`` evaluations (less noisy than the last one alone)."""
    y = np.asarray(y, dtype=np.float64)
    return float(y[-min(tail, y.size):].mean())


def arm_mean(views: Sequence[RunView], f: Callable[[RunView], float]) -> float:
    return float(np.mean([f(v) for v in views]))


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n over a set of texts: unique word n-grams / all word n-grams (Li et al. 2016); 0 with none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for t in texts:
        w = t.split()
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def bootstrap_paired(stat: Callable[[dict[str, np.ndarray]], float], arrays: dict[str, np.ndarray], *, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> Estimate:
    """``stat`` and its percentile interval when every array's first axis is the same prompts (e.g. best-of-n
    curves per prompt of several aggregations that pick among the very same samples): rows are resampled
    jointly, so differences between arrays keep their pairing."""
    if not arrays:
        raise ValueError("no arrays")
    P = {a.shape[0] for a in arrays.values()}
    if len(P) != 1:
        raise ValueError(f"every array's first axis must be the same prompts, got lengths {sorted(P)}")
    n = P.pop()
    if n < 2:
        raise ValueError(f"need at least 2 prompts to resample, got {n}")
    point = _safe_arrays(stat, arrays)
    rng = np.random.default_rng(seed)
    vals = np.array([_safe_arrays(stat, {k: a[idx] for k, a in arrays.items()})
                     for idx in (rng.integers(0, n, size=n) for _ in range(n_boot))])
    ok = vals[np.isfinite(vals)]
    q = (1.0 - level) / 2.0
    lo, hi = (math.nan, math.nan) if ok.size * 2 < n_boot else (float(x) for x in np.quantile(ok, [q, 1.0 - q]))
    return Estimate(point, lo, hi, n_boot, {"prompts": n})


def _safe_arrays(stat, arrays) -> float:
    try:
        v = float(stat(arrays))
    except (ValueError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError):
        return math.nan
    return v if math.isfinite(v) else math.nan
