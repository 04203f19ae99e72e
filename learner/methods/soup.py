"""Weight soups: the SALSA reference model (Chegini et al. 2024; docs/methods.md s.7).

SALSA trains two SFT models from the same base and uses their weight average as the KL reference:
theta_ref = alpha * theta_a + (1 - alpha) * theta_b, alpha = 0.5 performing best. ``weight_soup``
is the general convex combination sum_i w_i theta_i (uniform by default).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor


def _check_weights(weights: Sequence[float] | None, k: int) -> list[float]:
    if weights is None:
        return [1.0 / k] * k
    w = [float(x) for x in weights]
    if len(w) != k:
        raise ValueError(f"got {len(w)} weights for {k} state dicts")
    if any(not x >= 0.0 for x in w):  # also rejects NaN
        raise ValueError(f"weights must be non-negative, got {w}")
    if abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1 (within 1e-6), got sum {sum(w)}")
    return w


def weight_soup(state_dicts: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """sum_i w_i * state_dicts[i] for floating-point tensors; other tensors (int/bool buffers) must be
    equal in every dict and are copied.

    Every dict must have the same keys and shapes. Sums are taken in at least float32 (a bf16 sum would
    round small differences away) and cast back to the first dict's dtype, on the first dict's device.
    Returns new tensors in the first dict's key order, detached from the inputs.
    """
    if len(state_dicts) == 0:
        raise ValueError("need at least one state dict")
    w = _check_weights(weights, len(state_dicts))
    first = state_dicts[0]
    keys = set(first)
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != keys:
            missing, extra = sorted(keys - set(sd)), sorted(set(sd) - keys)
            raise ValueError(f"state dict {i} has different keys: missing {missing[:5]}, extra {extra[:5]}")
    out: dict[str, Tensor] = {}
    for name, ref in first.items():
        tensors = [sd[name] for sd in state_dicts]
        for i, t in enumerate(tensors):
            if not isinstance(t, Tensor):
                raise ValueError(f"{name!r} in state dict {i} is not a tensor ({type(t).__name__})")
            if t.shape != ref.shape:
                raise ValueError(f"{name!r} has shape {tuple(t.shape)} in state dict {i} but {tuple(ref.shape)} in state dict 0")
        if not ref.is_floating_point():
            for i, t in enumerate(tensors[1:], start=1):
                if t.dtype != ref.dtype or not torch.equal(t.to(ref.device), ref):
                    raise ValueError(f"non-float tensor {name!r} differs between state dict 0 and {i}; it cannot be averaged")
            out[name] = ref.detach().clone()
            continue
        acc_dtype = torch.promote_types(ref.dtype, torch.float32)
        acc = torch.zeros(ref.shape, dtype=acc_dtype, device=ref.device)
        for wi, t in zip(w, tensors):
            if not t.is_floating_point():
                raise ValueError(f"{name!r} is floating point in state dict 0 but {t.dtype} elsewhere")
            acc.add_(t.detach().to(device=ref.device, dtype=acc_dtype), alpha=wi)
        out[name] = acc.to(ref.dtype)
    return out


def alpha_soup(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float = 0.5) -> dict[str, Tensor]:
    """alpha * a + (1 - alpha) * b (SALSA, Chegini et al. 2024: alpha = 0.5 performs best)."""
    return weight_soup([a, b], [alpha, 1.0 - alpha])
