"""Critic-free advantage estimators over groups of samples of one prompt, the loss aggregation modes and DAPO's filter of
uninformative groups (issue 26). The sequence-level (GSPO) and asymmetric ("clip-higher") ratios are options of PPO's
clipped surrogate, ``learner.methods.ppo.policy_loss``.

Shapes: ``scores`` (B,) one scalar per sample (the aggregated proxy reward); ``groups`` (B,) int64, the prompt each
sample answers (samples of one prompt share a value); token tensors (B, T) with a 0/1 ``mask`` over response tokens.
Every function is pure; none builds, trains or needs a value network.

Sources (official code, read for the details that matter):
  GRPO / Dr. GRPO: veRL ``verl/trainer/ppo/core_algos.py::compute_grpo_outcome_advantage`` (group mean and the unbiased
    std, ``norm_adv_by_std_in_grpo``; Dr. GRPO, Liu et al. 2025, drops the std and the per-sequence length normaliser);
  RLOO: ``compute_rloo_outcome_advantage`` (s_i * n/(n-1) - mean * n/(n-1) = s_i - mean of the other n-1; Ahmadian
    et al. 2024);
  REINFORCE++ and its group baseline: ``compute_reinforce_plus_plus_outcome_advantage`` (discounted token returns of
    the KL-shaped rewards, whitened over the batch) and ``compute_reinforce_plus_plus_baseline_outcome_advantage``
    (score minus its group mean, broadcast to the tokens, whitened over the batch); Hu 2025;
  loss aggregation: ``agg_loss`` (token-mean, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm);
  GSPO: Zheng et al. 2025, the sequence ratio s_i = exp(mean_t log(pi / pi_old)) clipped per sequence;
  clip-higher and dynamic sampling: DAPO, Yu et al. 2025.

Where tether departs: a group of one sample gets advantage 0 under GRPO, Dr. GRPO and RLOO (veRL gives it its raw
score: its group mean is taken as 0); there is no relative signal in a group of one, and tether's config refuses
fewer than 2 samples per prompt for these estimators, so a singleton only arises when samples are dropped.
"""
from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from learner.types import GROUP_ESTIMATORS, LossAggregation  # noqa: F401 - GROUP_ESTIMATORS re-exported

from learner.methods.logprobs import masked_mean, masked_sum, masked_whiten

LOSS_AGGREGATIONS: tuple[str, ...] = get_args(LossAggregation)


def _group_stats(scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample: its group's size n, mean and unbiased std (0 where n < 2). scores (B,) float, groups (B,) int."""
    if scores.shape != groups.shape or scores.dim() != 1:
        raise ValueError(f"scores and groups must both be (B,), got {tuple(scores.shape)} and {tuple(groups.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores hold a non-finite value: an advantage cannot be formed from it")
    s = scores.double()
    _, inv = torch.unique(groups, return_inverse=True)  # (B,) group number 0..G-1
    G = int(inv.max()) + 1 if inv.numel() else 0
    n = torch.zeros(G, dtype=torch.float64, device=s.device).index_add_(0, inv, torch.ones_like(s))
    total = torch.zeros(G, dtype=torch.float64, device=s.device).index_add_(0, inv, s)
    mean = total / n
    sq = torch.zeros(G, dtype=torch.float64, device=s.device).index_add_(0, inv, (s - mean[inv]) ** 2)
    std = torch.where(n > 1, torch.sqrt(sq / (n - 1).clamp(min=1)), torch.zeros_like(n))
    return n[inv], mean[inv], std[inv]


def grpo_advantages(scores: Tensor, groups: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """A_i = (s_i - mean_g) / (std_g + eps) (GRPO), or s_i - mean_g (scale_by_std=False: Dr. GRPO). (B,) -> (B,) float32.
    Identical scores in a group give 0; a group of one gives 0."""
    n, mean, std = _group_stats(scores, groups)
    a = scores.double() - mean
    if scale_by_std:  # identical scores: 0 (not 0/0 when eps is 0)
        a = torch.where(std > 0, a / (std + eps), torch.zeros_like(a))
    return torch.where(n > 1, a, torch.zeros_like(a)).float()


def rloo_advantages(scores: Tensor, groups: Tensor) -> Tensor:
    """A_i = s_i - mean of the other n-1 samples of its group (the leave-one-out baseline excludes the sample itself).
    (B,) -> (B,) float32; a group of one gives 0."""
    n, mean, _ = _group_stats(scores, groups)
    s = scores.double()
    loo = (n * mean - s) / (n - 1).clamp(min=1)
    return torch.where(n > 1, s - loo, torch.zeros_like(s)).float()


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k over each row's valid tokens (0 elsewhere). (B, T) -> (B, T)."""
    valid = mask.bool()
    r = torch.where(valid, token_rewards.float(), torch.zeros((), dtype=torch.float32, device=token_rewards.device))
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running * valid[:, t].float()  # a masked position carries nothing back
        out[:, t] = torch.where(valid[:, t], running, torch.zeros_like(running))
    return out


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, *, gamma: float = 1.0) -> Tensor:
    """REINFORCE++: the discounted returns of the (KL-shaped) token rewards, whitened over every valid token of the
    batch. (B, T) -> (B, T), 0 where masked."""
    g = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(g, mask.bool()) * mask.float()


def reinforce_pp_baseline_advantages(scores: Tensor, groups: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE++ with a group baseline: s_i minus its group's mean, on every response token, whitened over the
    batch's valid tokens. (B,), (B,), (B, T) -> (B, T); a group of one keeps its raw score before whitening (as veRL)."""
    n, mean, _ = _group_stats(scores, groups)
    centred = torch.where(n > 1, scores.double() - mean, scores.double()).float()
    tok = centred[:, None].expand_as(mask).contiguous() * mask.float()
    return masked_whiten(tok, mask.bool()) * mask.float()


def informative_groups(scores: Tensor, groups: Tensor, *, atol: float = 0.0) -> Tensor:
    """DAPO's dynamic sampling: True for the samples of groups whose scores are not all equal (within atol); a group
    of identical scores has zero advantage under every group estimator and only dilutes the batch. (B,) bool."""
    _, inv = torch.unique(groups, return_inverse=True)
    G = int(inv.max()) + 1 if inv.numel() else 0
    s = scores.double()
    hi = torch.full((G,), -torch.inf, dtype=torch.float64, device=s.device).scatter_reduce(0, inv, s, "amax")
    lo = torch.full((G,), torch.inf, dtype=torch.float64, device=s.device).scatter_reduce(0, inv, s, "amin")
    return (hi - lo)[inv] > atol


def aggregate_loss(per_token: Tensor, mask: Tensor, mode: str, *, norm_len: int | None = None) -> Tensor:
    """A (B, T) loss to a scalar. token-mean: over every valid token of the batch (longer sequences weigh more);
    seq-mean-token-sum: the mean over sequences of each one's token sum; seq-mean-token-mean: the mean over sequences
    of each one's token mean (GRPO's original length normalisation); seq-mean-token-sum-norm: token sums divided by a
    constant ``norm_len`` (default T, the generation budget), then the mean over sequences (Dr. GRPO: no length bias)."""
    valid = mask.bool()
    if mode == "token-mean":
        return masked_mean(per_token, valid)
    sums = masked_sum(per_token, valid, dim=1)  # (B,)
    if mode == "seq-mean-token-sum":
        return sums.mean()
    if mode == "seq-mean-token-mean":
        lengths = valid.sum(1).clamp(min=1).to(per_token.dtype)
        return (sums / lengths).mean()
    if mode == "seq-mean-token-sum-norm":
        L = per_token.shape[1] if norm_len is None else norm_len
        if L < 1:
            raise ValueError(f"the constant length normaliser must be >= 1, got {L}")
        return (sums / L).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; accepted: {', '.join(LOSS_AGGREGATIONS)}")
