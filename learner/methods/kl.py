"""Per-token KL estimators and KL-coefficient control (docs/methods.md s.1).

Estimators follow Schulman's "Approximating KL divergence" note: with logr = log pi(a) - log pi_ref(a)
and a ~ pi, k1 = logr (unbiased, high variance, can be negative), k2 = logr^2 / 2 (biased, low
variance), k3 = (exp(-logr) - 1) + logr (unbiased, always >= 0). The adaptive controller is
Ziegler et al. 2019, section 2.2.
"""
from __future__ import annotations

from typing import Any, get_args

import torch
from torch import Tensor

from learner.types import KLEstimator

KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate from sampled-token log-probs. (B, T), (B, T) -> (B, T) float32."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; accepted: {', '.join(KL_ESTIMATORS)}")
    logr = logp.float() - ref_logp.float()  # (B, T)
    if estimator == "k1":
        return logr
    if estimator == "k2":
        return 0.5 * logr**2
    # k3: exp(-logr) = pi_ref/pi; (r - 1) - log r with r = pi_ref/pi, >= 0 since log r <= r - 1
    return torch.expm1(-logr) + logr


def exact_kl_from_logits(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """Exact per-token KL(p || q) = sum_v p_v (log p_v - log q_v) over the full vocabulary (Quark, docs/methods.md s.6).

    logits, ref_logits: (B, T, V) -> (B, T), float32.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)  # (B, T, V)
    return (logp.exp() * (logp - logq)).sum(-1)  # (B, T)


class FixedKLController:
    """A constant beta. ``update`` is a no-op so callers treat both controllers alike."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"mode": "fixed", "value": self.value}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 (eq. in s.2.2): e = clip(KL/target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon).

    ``current_kl`` is the measured KL per sequence (nats), ``n_steps`` the samples since the last update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"mode": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])
        self.target = float(d["target"])
        self.horizon = int(d["horizon"])


def make_kl_controller(*, mode: str, coef: float, target: float, horizon: int) -> FixedKLController | AdaptiveKLController:
    """Build the controller named by ``KLConfig.mode`` ("fixed" ignores target and horizon)."""
    if mode == "fixed":
        return FixedKLController(coef)
    if mode == "adaptive":
        return AdaptiveKLController(coef, target, horizon)
    raise ValueError(f"unknown KL controller mode {mode!r}; accepted: fixed, adaptive")
