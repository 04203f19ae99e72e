"""Aggregation of reward-model ensemble scores (Coste et al. 2023; docs/methods.md s.3).

For member scores r_1..r_k of one sample: mean; WCO (worst-case optimisation) = min_i r_i;
UWO (uncertainty-weighted optimisation) = mean - lambda * Var_i(r_i), population variance.
"""
from __future__ import annotations

from typing import get_args

from torch import Tensor

from learner.types import Aggregation

AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


def aggregate(scores: Tensor, method: str, *, uwo_lambda: float = 0.1) -> tuple[Tensor, Tensor]:
    """Aggregate (B, k) member scores into (B,) rewards; also return the (B,) population std across members.

    A 1-D (B,) input is one member (k = 1): every method returns it unchanged and the std is 0.
    ``uwo_lambda``: Coste et al. use about 0.1 for PPO and 0.5 for best-of-n.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown ensemble aggregation {method!r}; accepted: {', '.join(AGGREGATIONS)}")
    if scores.dim() == 1:
        scores = scores.unsqueeze(1)  # (B, 1)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, k) or (B,), got shape {tuple(scores.shape)}")
    scores = scores.float()  # (B, k)
    mean = scores.mean(dim=1)  # (B,)
    var = scores.var(dim=1, unbiased=False)  # (B,) population variance, 0 for k = 1
    std = var.sqrt()  # (B,)
    if method == "mean":
        agg = mean
    elif method == "wco":
        agg = scores.amin(dim=1)
    else:  # uwo
        agg = mean - uwo_lambda * var
    return agg, std
