"""PPO core: KL-shaped per-token rewards, GAE, clipped policy and value losses (docs/methods.md s.1).

References: Ziegler et al. 2019 (reward = score - beta * KL); Schulman et al. 2016, "High-Dimensional
Continuous Control Using GAE" eq. 16; Schulman et al. 2017, PPO eq. 7 (clipped surrogate) and the
clipped value loss of the OpenAI baselines implementation. Masks are 0/1 over response tokens and
each row's valid positions are contiguous (left or right padding). Masked-out positions of every
input are ignored, and masked-out positions of every output are 0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from learner.methods.advantages import aggregate_loss
from learner.methods.logprobs import masked_mean


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def per_token_rewards(*, scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """r_t = -beta * kl_t on valid tokens, plus the sequence score at each row's last valid token.

    scores: (B,); kl, mask: (B, T) -> (B, T) float32.

    Naive form (OpenRLHF ``compute_reward``):
        r = zeros(B, T)
        for b in range(B):
            for t in range(T):
                if mask[b, t]: r[b, t] = -beta * kl[b, t]
            valid = [t for t in range(T) if mask[b, t]]
            if valid: r[b, valid[-1]] += scores[b]
    """
    valid = mask.bool()  # (B, T)
    kl = kl.float()
    r = torch.where(valid, -beta * kl, _zero(kl))  # (B, T)
    T = valid.shape[1]
    pos = torch.arange(T, device=valid.device).expand_as(valid)  # (B, T)
    last = torch.where(valid, pos, -1).amax(dim=1)  # (B,) last valid index, -1 for an empty row
    has_any = last >= 0  # (B,)
    add = torch.where(has_any, scores.float().to(r.device), _zero(r))  # (B,)
    return r.scatter_add(1, last.clamp(min=0).unsqueeze(1), add.unsqueeze(1))


@torch.no_grad()
def gae(*, rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over the valid tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1}, with V and A after
    a row's last valid token taken as 0 (the episode ends there). Masked positions are skipped, so
    left- and right-padded rows give the same numbers. rewards, values, mask: (B, T).
    Returns (advantages, returns = advantages + values), both (B, T), detached, 0 where masked.
    Whitening is left to the caller (``masked_whiten``).
    """
    valid = mask.bool()  # (B, T)
    rewards, values = rewards.detach().float(), values.detach().float()
    B, T = rewards.shape
    zero = rewards.new_zeros(B)  # (B,)
    next_value, next_adv = zero, zero  # V_{t+1}, A_{t+1}: carried unchanged across masked positions
    adv = torch.zeros_like(rewards)  # (B, T)
    for t in reversed(range(T)):
        m = valid[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(m, a, zero)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, a, next_adv)
    returns = torch.where(valid, adv + values, _zero(adv))
    return adv, returns


def policy_loss(*, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float, weights: Tensor | None = None,
                clip_high: float | None = None, level: str = "token", agg: str = "token-mean",
                norm_len: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise, and its variants (issue 26).

    L = agg(w * max(-A * rho, -A * clip(rho, 1 - clip, 1 + clip_high))), rho = exp(logp - old_logp).
    logp, old_logp, advantages, mask: (B, T) (a sequence-level estimator's A_i on every token); ``weights`` w (B, T),
    constants (default 1): the off-policy correction of stale rollouts (``truncated_is_weights``; the decoupled objective
    of Hilton et al. 2022, where the clip is taken around the learner's own pi_old and w corrects for the policy that
    sampled). ``clip_high`` > ``clip``: DAPO's clip-higher (None: symmetric, PPO). ``level`` "token": rho per token
    (PPO, GRPO); "sequence": GSPO's s_i = exp(mean_t log(pi/pi_old)) of each sequence (Zheng et al. 2025), written per
    token as s_i,t = sg[s_i] * pi_t / sg[pi_t] so that every token carries the sequence's ratio and the gradient of the
    mean log-ratio. ``agg``: the loss aggregation (``learner.methods.advantages.aggregate_loss``; token-mean is PPO's).
    Stats: clipfrac, approx_kl (masked mean of 0.5 * (logp - old_logp)^2, i.e. k2), ratio_mean.
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"unknown importance-ratio level {level!r}; accepted: token, sequence")
    hi = clip if clip_high is None else clip_high
    if not (clip >= 0 and hi >= 0):
        raise ValueError(f"clip ranges must be >= 0, got clip {clip}, clip_high {clip_high}")
    valid = mask.bool()  # (B, T)
    logr = torch.where(valid, logp - old_logp.detach(), _zero(logp))  # (B, T); 0 where masked, so no exp overflow
    tok_logr = logr
    if level == "sequence":
        seq = masked_mean(logr, valid, dim=1)  # (B,) the mean log-ratio; 0 for an empty row
        logr = torch.where(valid, seq.detach()[:, None] + logp - logp.detach(), _zero(logp))
    ratio = torch.exp(logr)  # (B, T)
    adv = torch.where(valid, advantages.detach(), _zero(advantages))  # (B, T)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + hi)
    per_token = torch.maximum(pg1, pg2)
    if weights is not None:
        per_token = per_token * torch.where(valid, weights.detach(), _zero(per_token))
    loss = masked_mean(per_token, valid) if agg == "token-mean" else aggregate_loss(per_token, valid, agg, norm_len=norm_len)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg2 > pg1).float(), valid).item(),
            "approx_kl": masked_mean(0.5 * tok_logr.float() ** 2, valid).item(),
            "ratio_mean": masked_mean(ratio.float(), valid).item(),
        }
    return loss, stats


def truncated_is_weights(*, old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, dict[str, float]]:
    """Per-token importance weights min(pi_old / mu, cap) of rollouts sampled by mu, an older policy than the learner's
    pi_old (truncated importance sampling, as IMPALA's rho-bar and the peers' asynchronous modes: veRL's rollout
    correction, TIS). old_logp, behaviour_logp, mask: (B, T). Masked positions get weight 0; the ratio is formed in
    log space and clipped before exp, so no overflow (mu = 0 gives the cap); a NaN ratio (an unknown sampling
    probability) gives weight 0, so one bad token cannot turn the loss into NaN. Stats: is_weight_mean, is_clipfrac
    (share of tokens at the cap).
    """
    if not cap > 0:
        raise ValueError(f"the importance-weight cap must be > 0, got {cap}")
    valid = mask.bool()
    logw = torch.where(valid, old_logp.detach() - behaviour_logp.detach(), _zero(old_logp))
    logw = torch.clamp(torch.nan_to_num(logw, nan=-math.inf), max=math.log(cap))
    w = torch.where(valid, torch.exp(logw), _zero(old_logp))
    with torch.no_grad():
        stats = {"is_weight_mean": masked_mean(w, valid).item(), "is_clipfrac": masked_mean((logw >= math.log(cap)).float(), valid).item()}
    return w, stats


def value_loss(*, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss: 0.5 * masked_mean(max((v - R)^2, (v_clip - R)^2)), v_clip = v_old + clamp(v - v_old, -c, c).

    values, old_values, returns, mask: (B, T). Stats: vf_clipfrac (share of tokens where the clipped term is larger).
    """
    valid = mask.bool()  # (B, T)
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (B, T)
    vf1 = (values - returns) ** 2
    vf2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf1, vf2), valid)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((vf2 > vf1).float(), valid).item()}
    return loss, stats
