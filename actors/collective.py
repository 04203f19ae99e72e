"""Collective weight broadcast (``runtime.weight_sync: collective``): the learner's sending rank and every rollout
engine's workers join one process group (gloo on CPU, NCCL on GPU) and the weights go bucket by bucket straight
into vLLM's in-place reload, with no file system on the path.

The approach of OpenRLHF (``vllm_worker_wrap.py``: ``init_process_group`` / ``update_weight`` through a worker
extension) and veRL (its NCCL checkpoint engine): the group is *stateless* (its own TCPStore, built with
``ProcessGroupGloo`` / ``ProcessGroupNCCL`` directly) so it lives beside whatever default group the learner or
vLLM's worker already has. Buckets: consecutive tensors of one dtype flattened into one buffer of at most
``bucket_mb``; one broadcast per bucket; the receiver unflattens each bucket into views and hands them to
vLLM's ``reload_weights(weights_iterator=...)`` as they arrive (a generator: the next bucket is received while
vLLM consumes this one's tensors). Tied embeddings: ``lm_head.weight`` travels as its own tensor, as with the
other backends (actors/weight_sync.py: prepare_tensors).
"""
from __future__ import annotations

import datetime
import logging
import socket
import time
from collections.abc import Iterator

import torch

from actors import vllm_logging

log = logging.getLogger(__name__)
vllm_logging.install()  # imported by every vLLM worker (worker_extension_cls): its known-harmless warnings filtered there too

Meta = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype name) of every tensor, in send order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def stateless_group(backend: str, address: str, port: int, rank: int, world: int, timeout_s: float = 300.0):
    """A process group of its own (rank 0 hosts the TCPStore at address:port), independent of torch.distributed's
    default group. Returns the ProcessGroup object; collectives are its methods."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(address, port, world, is_master=(rank == 0), timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore("tether-weights", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    raise ValueError(f"backend must be gloo or nccl, got {backend!r}")


def with_tied_head(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights to send, with a tied output layer as its own entry (vLLM reloads it separately), on their device."""
    from actors.weight_sync import TIED_OUTPUT

    out = {k: v.detach() for k, v in named.items()}
    for emb, head in TIED_OUTPUT.items():
        if emb in out and head not in out:
            out[head] = out[emb]
    return out


def describe(named: dict[str, torch.Tensor]) -> Meta:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in named.items()]


def buckets(meta: Meta, bucket_mb: float) -> list[list[int]]:
    """Indices of ``meta`` grouped into buckets: consecutive tensors of one dtype, at most ``bucket_mb`` each (a
    tensor larger than that is a bucket of its own)."""
    limit = int(bucket_mb * 2**20)
    out: list[list[int]] = []
    size, dtype = 0, None
    for i, (_, shape, dt) in enumerate(meta):
        n = _numel(shape) * torch.empty((), dtype=getattr(torch, dt)).element_size()
        if not out or dt != dtype or size + n > limit:
            out.append([])
            size, dtype = 0, dt
        out[-1].append(i)
        size += n
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _broadcast(pg, t: torch.Tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([t], opts).wait()


def send(pg, named: dict[str, torch.Tensor], bucket_mb: float, device: torch.device) -> float:
    """Rank 0: broadcast every tensor of ``named`` (in ``describe`` order), bucket by bucket; returns seconds."""
    t0 = time.perf_counter()
    tensors = list(named.values())
    for idx in buckets(describe(named), bucket_mb):
        flat = torch.cat([tensors[i].detach().reshape(-1).to(device) for i in idx])
        _broadcast(pg, flat)
    return time.perf_counter() - t0


def receive(pg, meta: Meta, bucket_mb: float, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Ranks > 0: (name, tensor) of every weight, in ``meta`` order, as each bucket arrives."""
    for idx in buckets(meta, bucket_mb):
        dtype = getattr(torch, meta[idx[0]][2])
        sizes = [_numel(meta[i][1]) for i in idx]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        _broadcast(pg, flat)
        for i, part in zip(idx, torch.split(flat, sizes)):
            yield meta[i][0], part.view(meta[i][1])


class CollectiveSender:
    """The learner's end: rank 0 of the weight group."""

    def __init__(self, backend: str, address: str, port: int, world: int, device: torch.device, timeout_s: float = 300.0):
        self.pg = stateless_group(backend, address, port, 0, world, timeout_s)
        self.device = device if backend == "nccl" else torch.device("cpu")

    def send(self, named: dict[str, torch.Tensor], bucket_mb: float) -> float:
        return send(self.pg, named, bucket_mb, self.device)


class WeightReceiverExtension:
    """Mixed into vLLM's worker (``LLM(worker_extension_cls=...)``); called with ``llm.collective_rpc``. Each
    worker of an engine is one rank of the weight group."""

    def init_weight_group(self, backend: str, address: str, port: int, rank: int, world: int, timeout_s: float = 300.0) -> int:
        rank += int(getattr(self, "rank", 0))  # this worker's rank within its engine (tensor / pipeline parallel)
        self._tether_pg = stateless_group(backend, address, port, rank, world, timeout_s)
        self._tether_dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return rank

    def reload_file(self, path: str, version: int, fast: bool = True) -> str:
        """Reload every weight in place from views of a mapped safetensors file (actors/weight_sync.py: TensorFile); fails
        if the file does not hold ``version`` or was rewritten during the reload. ``fast``: the CPU path of
        actors/vllm_reload.py where it applies, else vLLM's ``reload_weights``. Returns the path taken ("fast" or "vllm")."""
        from actors import vllm_reload
        from actors.weight_sync import mapped

        f = mapped(path)
        with f.reading(version) as views:
            plan = None
            if fast:
                model = self.model_runner.get_model()
                shapes = {k: tuple(v.shape) for k, v in views.items()}
                cached = getattr(self, "_tether_plan", None)
                if cached is not None and cached[0] is model and cached[1] == shapes:
                    plan = cached[2]
                else:
                    plan = vllm_reload.plan(model, shapes, self.vllm_config)
                    self._tether_plan = (model, shapes, plan)
            if plan is None:
                self.model_runner.reload_weights(weights_iterator=iter(views.items()), is_checkpoint_format=True)
                return "vllm"
            vllm_reload.apply(plan, views, f.buffer)
        return "fast"

    def receive_weights_collective(self, meta: Meta, bucket_mb: float) -> int:
        """Receive every weight from rank 0 and reload it in place (checkpoint names, as vLLM's loader maps them)."""
        n = [0]

        def counted():
            for item in receive(self._tether_pg, meta, bucket_mb, self._tether_dev):
                n[0] += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
        return n[0]
