"""Where a role's models and batches live: the device Ray assigned it (CUDA when the role reserves GPUs and
CUDA is present), else the CPU; and the learner's optional bf16 autocast.

Ray sets CUDA_VISIBLE_DEVICES for an actor that reserves ``num_gpus``, so "cuda" inside it is the GPU Ray
assigned (index 0 of what it sees). Nothing else in tether picks a device: every tensor follows its model.
"""
from __future__ import annotations

import contextlib
import functools

import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """A device setting this process cannot honour (e.g. cuda without a visible GPU)."""


def resolve_device(setting: str, num_gpus: float, *, role: str = "role") -> torch.device:
    """The device for a role: ``cpu``; ``cuda`` (an error when no GPU is visible); ``auto`` = CUDA when the role
    reserves GPUs (``num_gpus > 0``) and one is visible, else the CPU."""
    if setting not in DEVICES:
        raise DeviceError(f"runtime.{role}.device must be one of {', '.join(DEVICES)}, got {setting!r}")
    cuda = torch.cuda.is_available()
    if setting == "cuda" and not cuda:
        raise DeviceError(f"runtime.{role}.device is 'cuda' but this process sees no GPU "
                          f"(runtime.{role}.num_gpus is {num_gpus:g}; give the role GPUs, or set device: auto or cpu)")
    if setting == "cuda" or (setting == "auto" and num_gpus > 0 and cuda):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def role_device(cfg, role: str) -> torch.device:
    """The device of one role of a run (``cfg.runtime.<role>``: its device setting and its reserved GPUs)."""
    res = getattr(cfg.runtime, role)
    return resolve_device(res.device, res.num_gpus, role=role)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on ``device`` (no copy when it is there already)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def native_bf16(device: torch.device, cpu_flags: set[str] | frozenset[str] | None = None) -> bool:
    """Whether ``device`` computes bf16 matmuls natively: a CUDA GPU that supports bf16, or a CPU with AVX512-BF16 or AMX-BF16
    (``cpu_flags``: the CPU's flags; default /proc/cpuinfo's, empty where it cannot be read)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's flags from /proc/cpuinfo, read once (autocast resolves precision 'auto' at every learner step)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(precision: str, device: torch.device) -> str:
    """runtime.learner.precision on ``device``: fp32 and bf16 as they are; auto = bf16 where it is native (native_bf16), else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast of the forward passes on ``device`` when ``precision`` is 'bf16' (or 'auto' resolving to it); a no-op
    for 'fp32'."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    # cache_enabled=False: autocast's cache keeps the bf16 copy of each weight made at its first use inside the
    # context, and the learner wraps a whole iteration (many optimiser steps) in one context; with the cache every
    # forward after the first update ran on the weights from before it (PPO's ratio stayed at 1). Without it each
    # forward casts the current weights, as accelerate's per-forward autocast (TRL) does.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)


def set_threads(n: int | None) -> int:
    """torch threads: ``n``, or every core this process may run on."""
    import os

    n = n or max(1, min(os.cpu_count() or 1, len(os.sched_getaffinity(0))))
    torch.set_num_threads(n)
    return n
