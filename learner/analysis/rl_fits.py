"""Gao et al.'s RL form fitted to the held-out evaluations of whole runs (docs/methods.md s.4): pooled over
runs (seeds), each recentred at its own pi_0 evaluation, with the reason when there is no fit."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from learner.analysis.scaling_laws import FitResult, d_from_kl, fit_rl, recentre

MIN_FIT_POINTS = 3  # evaluations with KL > 0 (besides each run's iteration-0 one) before a 2-coefficient fit means anything


@dataclass(frozen=True)
class RLFit:
    """A Gao et al. RL-form fit to one or more runs' evaluations, or why there is none.

    r0: mean iteration-0 gold of the runs (the curve is drawn at r0 + R(d)); kl_max: largest KL fitted
    (the curve is drawn up to there); fit None and reason set when there are too few points or the
    least-squares problem is singular.
    """

    fit: FitResult | None
    r0: float
    kl_max: float
    n_points: int
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-safe numbers (inf/nan become None); peak_kl = peak_d^2."""
        if self.fit is None:
            return {"n_points": self.n_points, "r0": _num(self.r0), "error": self.reason}
        f = self.fit
        return {"alpha": _num(f.alpha), "beta": _num(f.beta), "r2": _num(f.r2), "peak_d": _num(f.peak_d), "peak_kl": _num(f.peak_d**2),
                "peak_gold": _num(self.r0 + f.peak_r) if f.peak_r is not None else None, "n_points": f.n_points, "r0": _num(self.r0)}


def _num(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def fit_rl_runs(runs: list[tuple[np.ndarray, np.ndarray]]) -> RLFit:
    """Fit R(d) = d (alpha - beta log d) to the pooled evaluations of several runs (Gao et al. 2022).

    runs: per run (kl (M_i,), gold (M_i,)) from ``eval_points``. Each run's gold is recentred to its
    own first (iteration-0) evaluation, so pi_0 scores 0 as the form requires; per run rather than
    per method because the eval prompts depend on train.seed. That first point (R = 0 by construction)
    and points with KL <= 0 are left out of the fit.
    """
    d_all, r_all, r0s = [], [], []
    for kl, gold in runs:
        if len(kl) == 0:
            continue
        r0s.append(float(gold[0]))
        kl, r = kl[1:], recentre(gold[1:], gold[0])
        keep = (kl > 0) & np.isfinite(r)
        d_all.append(d_from_kl(kl[keep]))
        r_all.append(r[keep])
    r0 = float(np.mean(r0s)) if r0s else math.nan
    d = np.concatenate(d_all) if d_all else np.zeros(0)
    r = np.concatenate(r_all) if r_all else np.zeros(0)
    kl_max = float(np.max(d) ** 2) if d.size else 0.0
    if d.size < MIN_FIT_POINTS:
        return RLFit(None, r0, kl_max, int(d.size), f"too few points: {d.size} evaluation(s) with KL > 0 after iteration 0, need >= {MIN_FIT_POINTS}")
    try:
        f = fit_rl(d, r)
    except (ValueError, np.linalg.LinAlgError) as e:
        return RLFit(None, r0, kl_max, int(d.size), f"fit failed: {e}")
    if not (math.isfinite(f.alpha) and math.isfinite(f.beta)):
        return RLFit(None, r0, kl_max, int(d.size), "fit failed: non-finite coefficients")
    return RLFit(f, r0, kl_max, int(d.size))
