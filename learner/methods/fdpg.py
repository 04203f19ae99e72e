"""f-DPG: distribution matching with any f-divergence (Go et al. 2023; docs/methods.md s.5).

Target p(x) = p~(x) / Z with p~(x) = pi_0(x) exp(r(x) / beta) (RLHF as a target) or
p~(x) = pi_0(x) 1[constraint(x)] (GDC, Khalifa et al. 2021). For samples x ~ q (the policy or a
lagged copy) and t(x) = pi(x) / p(x), Go et al. 2023 minimise D_f(pi || p) with the gradient

    grad = E_q[ (pi(x) / q(x)) * (-f'(t(x)) - b) * grad log pi(x) ]    (ascent direction)

where b is a moving-average baseline of the pseudo-reward -f'(t). Z is an importance-sampling estimate
E_q[p~(x) / q(x)], kept in log-space: per prompt c from the batch's m samples of c (`per_prompt_log_z`;
naver/disco keeps one estimate per context, disco/tuners/tuner.py `_update_moving_z`, `self.z[context]`),
or one running estimate over every sample so far (`RunningLogZ`, one sample per prompt).

Sequences are scored by log pi(x) summed over response tokens: every tensor here is (B,).

Infinite log t (GDC sample that fails the constraint, p(x) = 0): log t is clamped to
[-LOG_T_CLAMP, LOG_T_CLAMP] before f' is applied, so pseudo-rewards stay finite. At log t = +50:
forward KL -> -exp(-50) ~ 0 (forward KL ignores where p = 0), reverse KL -> -51 (a strong push
down; the true limit is -inf), JS -> -(log 2 - 2e-22) ~ -log 2, TV -> -1/2.
"""
from __future__ import annotations

import math
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from learner.types import Divergence

DIVERGENCES: tuple[str, ...] = get_args(Divergence)
LOG_T_CLAMP = 50.0


def f_prime(log_t: Tensor, divergence: str) -> Tensor:
    """f'(t) as a function of log t (Go et al. 2023; docs/methods.md s.5), elementwise.

    forward KL, f(t) = -log t:                        f'(t) = -1/t      = -exp(-log t)
    reverse KL, f(t) = t log t:                       f'(t) = log t + 1
    JS, f(t) = t log t - (t + 1) log((t + 1) / 2):    f'(t) = log(2t / (t + 1)) = log 2 - softplus(-log t)
    TV, f(t) = |t - 1| / 2:                           f'(t) = sign(t - 1) / 2 = sign(log t) / 2
    """
    if divergence == "forward_kl":
        return -torch.exp(-log_t)
    if divergence == "reverse_kl":
        return log_t + 1.0
    if divergence == "js":
        return math.log(2.0) - F.softplus(-log_t)
    if divergence == "tv":
        return torch.sign(log_t) / 2.0
    raise ValueError(f"unknown divergence {divergence!r}; accepted: {', '.join(DIVERGENCES)}")


def log_target(*, init_logp_seq: Tensor, reward: Tensor | None = None, constraint: Tensor | None = None,
               beta: float | None = None) -> Tensor:
    """log p~(x) of the unnormalised target. init_logp_seq: (B,) log pi_0(x) summed over tokens.

    RLHF target (reward and beta): log pi_0(x) + r(x) / beta, reward (B,).
    GDC target (constraint, bool (B,)): log pi_0(x) where the constraint holds, -inf where it fails.
    Exactly one target must be given. Returns (B,) float32.
    """
    rlhf = reward is not None or beta is not None
    if rlhf == (constraint is not None):
        raise ValueError("give exactly one target: reward and beta (RLHF) or constraint (GDC)")
    base = init_logp_seq.detach().float()  # (B,)
    if rlhf:
        if reward is None or beta is None:
            raise ValueError("the RLHF target needs both reward and beta")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        return base + reward.detach().float().to(base.device) / beta
    ok = constraint.to(device=base.device).bool()  # (B,)
    return torch.where(ok, base, torch.full_like(base, -math.inf))


class RunningLogZ:
    """Running estimate of log Z, Z = E_q[p~(x) / q(x)], from importance weights in log-space.

    momentum=None (default): the mean over every sample seen so far (as in DPG/GDC, Khalifa et al. 2021), which
    stays unbiased when q changes between batches. A float: an exponential moving average of the
    batch means, log Z <- log(m Z + (1 - m) Z_batch), the first batch taken as is.
    """

    def __init__(self, momentum: float | None = None) -> None:
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1) or None, got {momentum}")
        self.momentum = momentum
        self.log_sum = -math.inf  # log sum_i p~(x_i) / q(x_i) (cumulative mode)
        self.count = 0
        self.log_z = -math.inf

    def update(self, log_ptilde: Tensor, log_q: Tensor) -> float:
        """Add a batch: log_ptilde, log_q (B,). -inf log_ptilde (zero weight) is allowed. Returns log Z."""
        log_w = (log_ptilde.detach().double() - log_q.detach().double().to(log_ptilde.device)).reshape(-1)  # (B,)
        if log_w.numel() == 0:
            return self.log_z
        batch_lse = torch.logsumexp(log_w, dim=0).item()  # log sum_i w_i
        if self.momentum is None:
            self.log_sum = float(np.logaddexp(self.log_sum, batch_lse))
            self.count += log_w.numel()
            self.log_z = self.log_sum - math.log(self.count)
            return self.log_z
        batch_log_mean = batch_lse - math.log(log_w.numel())
        if self.count == 0 or self.momentum == 0.0:
            self.log_z = batch_log_mean
        else:  # log(m Z + (1 - m) Z_batch)
            m = self.momentum
            self.log_z = float(np.logaddexp(math.log(m) + self.log_z, math.log1p(-m) + batch_log_mean))
        self.count += log_w.numel()
        return self.log_z

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "log_sum": self.log_sum, "count": self.count, "log_z": self.log_z}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.momentum = d["momentum"]
        self.log_sum, self.count, self.log_z = float(d["log_sum"]), int(d["count"]), float(d["log_z"])


class MovingBaseline:
    """b <- momentum * b + (1 - momentum) * mean(values); the first update sets b = mean(values); b starts at 0."""

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.value = 0.0
        self.n_updates = 0

    def update(self, values: Tensor | float) -> float:
        mean = torch.as_tensor(values, dtype=torch.float64).detach().mean().item()
        self.value = mean if self.n_updates == 0 else self.momentum * self.value + (1.0 - self.momentum) * mean
        self.n_updates += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "value": self.value, "n_updates": self.n_updates}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.momentum, self.value, self.n_updates = float(d["momentum"]), float(d["value"]), int(d["n_updates"])


def per_prompt_log_z(log_ptilde: Tensor, log_q: Tensor, groups: Tensor) -> Tensor:
    """log Z_c for each row's prompt c: log of the mean importance weight p~(x)/q(x) over the rows of that prompt.

    log_ptilde, log_q: (B,); groups: (B,) int prompt index of each row. Returns (B,) float64, -inf for a
    prompt none of whose samples has p~(x) > 0 (a GDC prompt whose samples all fail the constraint).
    """
    log_w = log_ptilde.detach().double() - log_q.detach().double().to(log_ptilde.device)  # (B,)
    g = groups.to(log_w.device).long()
    out = torch.empty_like(log_w)
    for c in torch.unique(g):
        rows = g == c
        out[rows] = torch.logsumexp(log_w[rows], dim=0) - math.log(int(rows.sum()))
    return out


def _check_log_z(log_z: float | Tensor) -> None:
    bad = not math.isfinite(log_z) if isinstance(log_z, float | int) else not bool(torch.isfinite(log_z).all())
    if bad:
        raise ValueError(f"log_z must be finite, got {log_z} (no sample with p~(x) > 0 seen yet?)")


def pseudo_reward(*, policy_logp_seq: Tensor, log_ptilde: Tensor, log_z: float | Tensor, divergence: str) -> tuple[Tensor, Tensor]:
    """-f'(t) with log t = log pi(x) - (log p~(x) - log Z), clamped to +-LOG_T_CLAMP. All (B,), detached.
    log_z: one float, or (B,) per row (each row's prompt's Z_c).

    Returns (pseudo_reward, log_t), both (B,) float32. Feed the first to ``MovingBaseline.update``.
    """
    _check_log_z(log_z)
    if isinstance(log_z, Tensor):
        log_z = log_z.detach().float().to(log_ptilde.device)
    log_p = log_ptilde.detach().float() - log_z  # (B,) log p(x); -inf where the GDC constraint fails
    log_t = (policy_logp_seq.detach().float() - log_p).clamp(-LOG_T_CLAMP, LOG_T_CLAMP)  # (B,); +inf -> 50
    return -f_prime(log_t, divergence), log_t


def fdpg_loss(
    *,
    policy_logp_seq: Tensor,
    proposal_logp_seq: Tensor,
    log_ptilde: Tensor,
    log_z: float | Tensor,
    baseline: float,
    divergence: str,
    clip_weight: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """f-DPG surrogate loss; its gradient is -E_q[(pi/q) (-f'(t) - b) grad log pi(x)] (Go et al. 2023).

    policy_logp_seq: (B,) log pi(x) summed over tokens, with grad; proposal_logp_seq: (B,) log q(x);
    log_ptilde: (B,) from ``log_target``; log_z from ``RunningLogZ`` or (B,) from ``per_prompt_log_z``; baseline b
    from ``MovingBaseline``.
    clip_weight caps the importance weight pi/q (None: no cap).

    Naive form:
        loss = 0
        for i in range(B):
            t = exp(logpi[i]) / (exp(log_ptilde[i]) / Z)
            w = min(exp(logpi[i] - logq[i]), clip_weight)
            loss -= w * (-f'(t) - b) * logpi[i] / B     # w and t held constant
    """
    if clip_weight is not None and clip_weight <= 0:
        raise ValueError(f"clip_weight must be > 0 or None, got {clip_weight}")
    pr, log_t = pseudo_reward(policy_logp_seq=policy_logp_seq, log_ptilde=log_ptilde, log_z=log_z, divergence=divergence)
    log_w = policy_logp_seq.detach().float() - proposal_logp_seq.detach().float()  # (B,) log pi/q
    w = torch.exp(log_w)  # (B,)
    if clip_weight is not None:
        w = w.clamp(max=clip_weight)
    coef = w * (pr - baseline)  # (B,) detached
    loss = -(coef * policy_logp_seq.float()).mean()
    stats = {
        "fdpg/pseudo_reward_mean": pr.mean().item(),
        "fdpg/log_t_mean": log_t.mean().item(),
        "fdpg/weight_mean": w.mean().item(),
    }
    return loss, stats
