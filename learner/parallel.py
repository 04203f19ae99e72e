"""Data parallelism for a learner group: one rank's view of N learner processes joined in a torch.distributed
process group (gloo on CPU, NCCL on GPU), replicated weights, each rank taking its share of every batch.

Exactness. Every rank holds the same weights, the same full rollout batch and draws the same seeded minibatch
order; rank r takes rows ``r, r + N, r + 2N, ...`` of each minibatch. tether's losses are means over the
minibatch's response tokens (PPO, Quark) or sequences (f-DPG), so rank r scales its loss by its share of them,
``n_r / sum_s n_s``, and the gradients are summed across ranks: the sum is exactly the gradient of the whole
minibatch's loss (up to float rounding of the reduction), the clipped norm and the Adam step are the same on
every rank, and the weights stay identical without ever being broadcast. The no-grad pass over the batch
(old log-probs, values, the reference) is split the same way and its rows gathered back.

A group of one (``DataParallel()``) is the identity everywhere, so the one-process path is unchanged.

Sharding (``runtime.learner.sharding: fsdp2``, ``shard_fsdp2``): the same rows, shares and seeded order, but each rank holds
1/N of every parameter (FSDP2's ``fully_shard``: each transformer block a unit, then the root), gathered for a block's
forward and backward; the gradients are reduce-scattered by FSDP (which averages: ``reduce_grads`` multiplies them by N,
so they are the same sum as above), and the clipped norm and Adam act on the shards.
"""
from __future__ import annotations

import numpy as np
import torch


class DataParallel:
    def __init__(self, rank: int = 0, world: int = 1, group=None, device: torch.device | str = "cpu"):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.rank, self.world, self.group = rank, world, group
        self.device = torch.device(device)  # where the small reductions (shares, statistics) run: cuda for NCCL

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's rows of a minibatch (every world-th, from its rank)."""
        return idx[self.rank :: self.world] if self.active else idx

    def share(self, n_local: float | torch.Tensor) -> float:
        """This rank's share of a total over the group: n_local / sum over ranks (1.0 on one rank)."""
        if not self.active:
            return 1.0
        t = torch.tensor([float(n_local)], dtype=torch.float64, device=self.device)
        self._all_reduce(t)
        return float(n_local) / float(t.item()) if t.item() > 0 else 1.0 / self.world

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every trainable parameter's gradient across the group (losses were already scaled by ``share``).

        A parameter without a gradient on this rank contributes zeros, so every rank reduces the same tensors in
        the same order (a missing one would leave the others waiting)."""
        if not self.active:
            return
        for p in params:
            if not p.requires_grad:
                continue
            if is_dtensor(p):  # sharded (fsdp2): FSDP reduce-scattered the gradient already, as a mean over the group
                if p.grad is not None:
                    p.grad.mul_(self.world)
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self._all_reduce(p.grad)

    def weighted_sum(self, stats: dict[str, float], share: float) -> dict[str, float]:
        """sum over ranks of share_r * stats_r: a minibatch statistic of the whole group (its token / row mean)."""
        if not self.active:
            return stats
        keys = sorted(stats)
        t = torch.tensor([share * float(stats[k]) for k in keys], dtype=torch.float64, device=self.device)
        self._all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The full batch from every rank's rows (rank r holds rows r::world); inverse of sharding ``arange(B)``."""
        if not self.active:
            return x
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.world)]
        dev = x.device
        if dist.get_backend(self.group) == "gloo" and dev.type != "cpu":
            raise RuntimeError("gloo gathers CPU tensors; use the nccl backend for CUDA tensors")
        dist.all_gather(parts, x.contiguous(), group=self.group)
        out = torch.empty((x.shape[0] * self.world, *x.shape[1:]), dtype=x.dtype, device=dev)
        for r, part in enumerate(parts):
            out[r :: self.world] = part
        return out

    def _all_reduce(self, t: torch.Tensor) -> None:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)


def init_group(*, rank: int, world: int, address: str, port: int, backend: str, timeout_s: float = 300.0) -> DataParallel:
    """Join (or, on rank 0, host) the learner group's process group at tcp://address:port."""
    import datetime

    import torch.distributed as dist

    if world == 1:
        return DataParallel()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DataParallel(rank, world, None, device)


def is_dtensor(t) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2-sharded parameter, its gradient or state)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without DTensor cannot have made one
        return False
    return isinstance(t, DTensor)


class Lazy:
    """A tensor made only when it is needed, one at a time (a sharded LoRA layer's merged weight): ``shape`` and ``dtype``
    without making it, ``full(lazy)`` to make it (the gathers inside are collectives, as ``full``'s)."""

    def __init__(self, shape, dtype: torch.dtype, make):
        self.shape, self.dtype, self._make = torch.Size(shape), dtype, make

    def detach(self) -> "Lazy":
        return self

    def is_contiguous(self) -> bool:
        return True


def full(t) -> torch.Tensor:
    """The whole tensor: a DTensor gathered (a collective: every rank must call it, in the same order), a Lazy one made,
    else ``t``."""
    if isinstance(t, Lazy):
        return t._make()
    return t.full_tensor() if is_dtensor(t) else t


def block_types(model: torch.nn.Module) -> set[str]:
    """Class names of the transformer blocks under ``model`` (Hugging Face models list them in ``_no_split_modules``)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard_fsdp2(model: torch.nn.Module, *, bf16: bool = False) -> int:
    """FSDP2 ``fully_shard`` over the default process group, in place: every transformer block as a unit, then ``model``
    (embeddings, norms, heads, a value head). Returns the number of blocks sharded. ``bf16``: the units compute in bf16, the
    gradients are reduced in fp32 (a MixedPrecisionPolicy; the parameters and Adam's state stay fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    types = block_types(model)
    blocks = [m for m in model.modules() if type(m).__name__ in types]
    if not blocks:
        raise ValueError(f"runtime.learner.sharding fsdp2: no transformer block found in {type(model).__name__} (no _no_split_modules)")
    for b in blocks:
        fully_shard(b, mp_policy=mp)
    # the outermost Hugging Face models below the root (a policy-with-value's LM and critic) are units of their own, so that
    # calling one directly (a LoRA reference runs the LM with its adapters off) gathers its embeddings and head; tied weights
    # stay inside one unit
    picked: list[str] = []
    for name, m in model.named_modules() if not hasattr(model, "_no_split_modules") else ():  # a wrapper (a policy-with-value) only
        if name and getattr(m, "_no_split_modules", None) and type(m).__name__ not in types and not any(name.startswith(p + ".") for p in picked):
            picked.append(name)
            fully_shard(m, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return len(blocks)
