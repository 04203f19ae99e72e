"""Fits of gold reward against d = sqrt(KL(pi || pi_0)) (Gao et al. 2022; docs/methods.md s.4).

Gao et al. 2022, functional forms: best-of-n R(d) = d * (alpha_bon - beta_bon * d);
                                   RL         R(d) = d * (alpha_rl - beta_rl * log d).
Rewards are recentred so that pi_0 scores 0 (``recentre``), so both forms have no intercept and are
linear in (alpha, beta): ordinary least squares on the columns (d, -d^2) or (d, -d log d).
Peaks: dR/dd = 0 gives d* = alpha / (2 beta) (best-of-n) and d* = exp(alpha / beta - 1) (RL).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

def d_from_kl(kl: ArrayLike) -> NDArray[np.float64]:
    """d = sqrt(KL) in sqrt-nats, the x-axis of every Gao et al. plot."""
    kl = np.asarray(kl, dtype=np.float64)
    if np.any(kl < 0):
        raise ValueError("KL must be >= 0")
    return np.sqrt(kl)


def recentre(r: ArrayLike, r0: float) -> NDArray[np.float64]:
    """Rewards relative to pi_0's mean reward r0, so that R(d = 0) = 0 (Gao et al. 2022)."""
    return np.asarray(r, dtype=np.float64) - float(r0)


def _d_log_d(d: NDArray[np.float64]) -> NDArray[np.float64]:
    # d log d -> 0 as d -> 0+; negative d has no meaning (nan)
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * np.log(safe), np.where(d == 0, 0.0, np.nan))


@dataclass(frozen=True)
class FitResult:
    """Least-squares fit of one functional form.

    peak_d: d at the maximum of R on d >= 0; inf when beta <= 0 (R has no finite maximum), 0 for
    best-of-n when alpha <= 0 < beta. peak_r: R(peak_d), None when peak_d is inf.
    r2: 1 - SS_res / SS_tot with SS_tot about the mean of the fitted r (nan if all r are equal
    but the fit is not exact).
    """

    alpha: float
    beta: float
    r2: float
    peak_d: float
    peak_r: float | None
    n_points: int
    form: str

    def predict(self, d: ArrayLike) -> NDArray[np.float64]:
        """R(d) for this form and these coefficients. d: any shape, >= 0."""
        d = np.asarray(d, dtype=np.float64)
        if self.form == "bon":
            return bon_form(d, self.alpha, self.beta)
        return self.alpha * d - self.beta * _d_log_d(d)


def _check(d: ArrayLike, r: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    if d.size != r.size:
        raise ValueError(f"d and r must have the same length, got {d.size} and {r.size}")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(r))):
        raise ValueError("d and r must be finite")
    if np.any(d < 0):
        raise ValueError("d = sqrt(KL) must be >= 0; pass d_from_kl(kl)")
    return d, r


def _lstsq(X: NDArray[np.float64], r: NDArray[np.float64], form: str) -> tuple[float, float, float]:
    """Solve r ~ X @ (alpha, beta). X: (M, 2), r: (M,). Returns alpha, beta, r2."""
    if X.shape[0] < 2:
        raise ValueError(f"{form} fit needs at least 2 points, got {X.shape[0]}")
    if np.linalg.matrix_rank(X) < 2:
        raise ValueError(f"{form} fit is underdetermined: need at least 2 distinct d values (d > 0, and d != 1 for rl)")
    coef, *_ = np.linalg.lstsq(X, r, rcond=None)
    resid = r - X @ coef
    ss_res = float(resid @ resid)
    ss_tot = float(((r - r.mean()) ** 2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res <= 1e-24 else math.nan
    return float(coef[0]), float(coef[1]), r2


def fit_bon(d: ArrayLike, r: ArrayLike) -> FitResult:
    """Fit R(d) = d * (alpha - beta * d) (Gao et al. 2022, best-of-n form). d: (M,) >= 0; r: (M,) recentred gold."""
    d, r = _check(d, r)
    X = np.stack([d, -(d**2)], axis=1)  # (M, 2)
    alpha, beta, r2 = _lstsq(X, r, "bon")
    if beta <= 0:
        peak_d, peak_r = math.inf, None
    else:
        peak_d = max(alpha / (2.0 * beta), 0.0)  # R'(d) = alpha - 2 beta d
        peak_r = peak_d * (alpha - beta * peak_d)  # = alpha^2 / (4 beta) when alpha > 0
    return FitResult(alpha, beta, r2, peak_d, peak_r, int(d.size), "bon")


def fit_rl(d: ArrayLike, r: ArrayLike) -> FitResult:
    """Fit R(d) = d * (alpha - beta * log d) (Gao et al. 2022, RL form) on the points with d > 0.

    d: (M,) >= 0; r: (M,) recentred gold. d = 0 points are dropped (log 0; the form forces R(0) = 0).
    """
    d, r = _check(d, r)
    keep = d > 0
    d, r = d[keep], r[keep]
    if d.size == 0:
        raise ValueError("rl fit needs points with d > 0, got none")
    X = np.stack([d, -d * np.log(d)], axis=1)  # (M, 2)
    alpha, beta, r2 = _lstsq(X, r, "rl")
    if beta <= 0:
        peak_d, peak_r = math.inf, None
    else:
        log_peak = alpha / beta - 1.0  # R'(d) = alpha - beta (log d + 1)
        peak_d = math.exp(log_peak) if log_peak < 700 else math.inf  # a tiny beta: no peak within float range
        peak_r = beta * peak_d if math.isfinite(peak_d) else None  # R(d*) = d* (alpha - (alpha - beta)) = beta d*
    return FitResult(alpha, beta, r2, peak_d, peak_r, int(d.size), "rl")


def bon_form(d: ArrayLike, alpha: float, beta: float) -> NDArray[np.float64]:
    """Gao et al.'s best-of-n form R(d) = d (alpha - beta d). d: any shape."""
    d = np.asarray(d, dtype=np.float64)
    return d * (alpha - beta * d)


def fit_bon_curve(kl: ArrayLike, gold: ArrayLike) -> dict:
    """Best-of-n form fitted to a best-of-n curve (kl, gold: (M,), the first point n = 1, i.e. pi_0), recentred there.

    Returns alpha, beta, r2, peak_d, peak_kl, peak_gold_gain (over pi_0), n_points; {"error": ...} if it cannot be fitted.
    """
    gold = np.asarray(gold, dtype=np.float64)
    try:
        f = fit_bon(d_from_kl(kl), recentre(gold, gold[0]))
    except ValueError as e:  # n_max < 3: fewer than two distinct d > 0
        return {"error": str(e)}
    return {"alpha": f.alpha, "beta": f.beta, "r2": f.r2, "peak_d": f.peak_d, "peak_kl": f.peak_d**2,
            "peak_gold_gain": f.peak_r, "n_points": f.n_points}
