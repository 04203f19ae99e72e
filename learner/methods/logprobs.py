"""Token log-probabilities, entropies and masked reductions (the building blocks of PPO, docs/methods.md s.1).

Shapes: B = batch, T = tokens, V = vocabulary. Masks are 0/1 (bool, int or float) and are read as
booleans: a position counts iff mask != 0. Masked-out positions may hold any finite or non-finite
value; reductions select with ``torch.where`` (not ``x * mask``) so a NaN or inf there cannot leak.
"""
from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[tokens], computed in float32.

    logits: (B, T, V); tokens: (B, T) long. Returns (B, T) float32.
    """
    logits = logits.float()  # (B, T, V); bf16 log-softmax loses ~2 digits, enough to bias the PPO ratio
    picked = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    # log p(a) = z_a - logsumexp(z): avoids materialising a second (B, T, V) log_softmax tensor
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H(p) = -sum_v p_v log p_v of softmax(logits), in float32. logits: (B, T, V) -> (B, T)."""
    logits = logits.float()  # (B, T, V)
    p = torch.softmax(logits, dim=-1)  # (B, T, V)
    # H = logsumexp(z) - sum_v p_v z_v  (since log p_v = z_v - logsumexp(z))
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)  # (B, T)


def _valid(x: Tensor, mask: Tensor) -> Tensor:
    return mask.to(device=x.device).bool().expand_as(x)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x over positions where mask != 0 (all of them when dim is None, else along dim)."""
    kept = torch.where(_valid(x, mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over positions where mask != 0. An empty mask gives 0, not NaN."""
    valid = _valid(x, mask)
    n = valid.sum() if dim is None else valid.sum(dim)
    return masked_sum(x, valid, dim) / n.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Scalar variance of x over all positions where mask != 0.

    With ``unbiased`` the Bessel factor n / (n - 1) is applied when n > 1; with n <= 1 the result is 0.
    """
    valid = _valid(x, mask)
    mean = masked_mean(x, valid)  # ()
    var = masked_mean((x - mean) ** 2, valid)  # () population variance
    if unbiased:
        n = valid.sum().to(x.dtype)
        var = var * torch.where(n > 1, n / (n - 1).clamp(min=1), torch.ones_like(n))
    return var


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) with mean and (unbiased) var over the masked entries.

    Used to whiten GAE advantages over the batch (docs/methods.md s.1). ``shift_mean=False`` keeps the
    mean (only rescales), as TRL/veRL do for rewards. Masked-out positions are returned as 0.
    """
    valid = _valid(x, mask)
    mean = masked_mean(x, valid)  # ()
    var = masked_var(x, valid, unbiased=True)  # ()
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
