"""The four roles as plain classes: what each role does, with no Ray in sight.

``actors/roles.py`` wraps each in a thin Ray actor (threads, Ray metrics); ``actors/roleset.py`` runs them
in-process for ``runtime.mode: local`` (where a breakpoint works) or as those actors. Checkpointing, KL
changes and weight publishing therefore exist once, here, for both modes.
"""
from __future__ import annotations

import time

import torch

from learner.config import TetherConfig


def set_kl(kl_ctl, *, coef: float | None = None, target: float | None = None) -> dict:
    """Set the KL controller's beta and/or target in place; returns the old values ({kl_coef, kl_target})."""
    if kl_ctl is None:
        raise ValueError("kl_coef/kl_target apply only to algorithm 'ppo'")
    old = {"kl_coef": kl_ctl.value, "kl_target": getattr(kl_ctl, "target", None)}
    if coef is not None:
        kl_ctl.value = float(coef)
    if target is not None:
        if not hasattr(kl_ctl, "target"):
            raise ValueError("kl_target applies only to kl.mode 'adaptive' (this run uses a fixed beta)")
        kl_ctl.target = float(target)
    return old


def file_backend(cfg: TetherConfig) -> str:
    """The handle-passing backend of actors/weight_sync.py a role uses (auto: tmpfs, for the receivers on the learner's node)."""
    return "tmpfs" if cfg.runtime.weight_sync == "auto" else cfg.runtime.weight_sync


def make_engine(cfg: TetherConfig, policy_path: str, *, seed: int, run_id: str):
    """The configured rollout engine as a plain object."""
    if cfg.runtime.engine == "vllm":
        from actors.vllm_engine import VLLMEngine

        return VLLMEngine(policy_path, cfg.generation, seed=seed, kv_cache_gib=cfg.runtime.kv_cache_gib, run_id=run_id)
    from learner.models.device import role_device
    from learner.models.engine import TransformersEngine

    return TransformersEngine.from_path(policy_path, cfg.generation, device=role_device(cfg, "rollout"))


class RolloutWorker:
    """A rollout engine and, between processes, the receiving end of the weight sync (``with_sync``)."""

    def __init__(self, cfg: TetherConfig, policy_path: str, index: int, run_id: str, *, with_sync: bool = True):
        self.engine = make_engine(cfg, policy_path, seed=cfg.train.seed + index, run_id=f"{run_id}-r{index}")
        self.sync = None
        if with_sync and cfg.runtime.weight_sync != "collective":  # the collective backend joins a group instead
            from actors.weight_sync import make_weight_sync  # auto: tmpfs for the learner's node, a group for the others

            self.sync = make_weight_sync(file_backend(cfg), run_id=f"{run_id}-r{index}")

    def rebind(self, cfg: TetherConfig, run_id: str, index: int) -> None:
        """Serve another run (a warm sweep's next cell, actors/roleset.py::RayRoleSet.rebind): the loaded engine stays, with
        that run's sampling settings and engine seed; a new weight-sync endpoint under its run id. The caller checked that the
        engine itself is the same (warm_key) and loads the run's initial weights next."""
        self.engine.gen = cfg.generation
        if hasattr(self.engine, "seed"):
            self.engine.seed = cfg.train.seed + index
        if self.sync is not None:
            self.sync.close()
            from actors.weight_sync import make_weight_sync

            self.sync = make_weight_sync(file_backend(cfg), run_id=f"{run_id}-r{index}")

    def generate(self, prompts: list[str], seed: int, prefix_ids: list[int] | None = None, prompt_ids: list[list[int]] | None = None):
        return self.engine.generate(prompts, seed=seed, prefix_ids=prefix_ids, prompt_ids=prompt_ids)  # None: the engine encodes (imdb)

    def load(self, handle, version: int) -> float:
        """Receive weights published by the learner; returns the seconds it took."""
        t = time.perf_counter()
        if hasattr(self.engine, "load_weights_from_file"):
            path, v = self.sync.receive_file(handle)
            self.engine.load_weights_from_file(path, v)
        else:
            sd, v = self.sync.receive(handle)
            self.engine.load_weights(sd, v)
        if v != version:
            raise RuntimeError(f"weight sync delivered version {v}, expected {version}")
        return time.perf_counter() - t

    # -- the collective weight sync (actors/collective.py) --------------------------------------------
    def weight_group_size(self) -> int:
        """Ranks this rollout actor takes in the weight group: one per vLLM worker (one for transformers)."""
        return getattr(self.engine, "n_workers", 1)

    def join_weight_group(self, backend: str, address: str, port: int, rank: int, world: int) -> None:
        if hasattr(self.engine, "join_weight_group"):
            self.engine.join_weight_group(backend, address, port, rank, world)
        else:
            from actors.collective import stateless_group

            self._pg, self._pg_backend = stateless_group(backend, address, port, rank, world), backend

    def receive_collective(self, meta, bucket_mb: float, version: int) -> float:
        t = time.perf_counter()
        if hasattr(self.engine, "receive_collective"):
            self.engine.receive_collective(meta, bucket_mb, version)
        else:
            from actors.collective import receive

            dev = torch.device("cuda", torch.cuda.current_device()) if self._pg_backend == "nccl" else torch.device("cpu")
            self.engine.load_weights(dict(receive(self._pg, meta, bucket_mb, dev)), version)
        return time.perf_counter() - t

    def load_state_dict(self, state_dict: dict, version: int) -> None:
        """In-process: take the learner's weights directly (no sync backend between two objects of one process)."""
        self.engine.load_weights(state_dict, version)

    def policy_version(self) -> int:
        return self.engine.policy_version

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        # vLLM unlinks its shared-memory message queues (/dev/shm/psm_*, ~400 MB per engine) only when shut down
        close = getattr(self.engine, "close", None)
        if close:
            close()


class RewardWorker:
    """The proxy ensemble: scores and their aggregate (mean / WCO / UWO)."""

    def __init__(self, cfg: TetherConfig, member_paths: list):
        from learner.models.device import role_device
        from learner.models.reward import ProxyEnsemble

        self.ensemble = ProxyEnsemble(member_paths, aggregation=cfg.ensemble.aggregation, uwo_lambda=cfg.ensemble.lam, max_len=cfg.proxy.max_len,
                                      device=role_device(cfg, "reward"))

    def score(self, rollouts):
        return self.ensemble.score(rollouts)

    def set_uwo_lambda(self, lam: float) -> float:
        old, self.ensemble.uwo_lambda = self.ensemble.uwo_lambda, float(lam)
        return old


class GoldWorker:
    """Gold reward and drift from pi_0 (held out from training)."""

    def __init__(self, cfg: TetherConfig, gold_path, policy_path: str):
        from learner.models.device import role_device
        from learner.models.gold_eval import GoldEvaluator

        self.evaluator = GoldEvaluator.from_paths(gold_path, policy_path, device=role_device(cfg, "gold"))

    def evaluate(self, rollouts, prefix: str) -> dict:
        return self.evaluator.evaluate(rollouts, prefix=prefix)

    def drift_and_gold(self, rollouts, prefix: str) -> tuple[dict, list[float]]:
        """Drift statistics and each sample's gold reward, the gold scoring the batch once."""
        return self.evaluator.drift_and_gold(rollouts, prefix=prefix)

    def gold_scores(self, samples) -> list[float]:
        """Gold rewards of whole texts, or of Rollouts (a scorer gold reads the task's prompt and metadata from them)."""
        return self.evaluator.gold_scores(samples)


class LearnerWorker:
    """The algorithm's learner, its checkpoints, live parameter changes and (between processes) the sending end of
    the weight sync."""

    def __init__(self, cfg: TetherConfig, policy_path: str, run_id: str, reference: list[str] | None = None,
                 reference_weights: list[float] | None = None, *, with_sync: bool = True):
        from learner.learners import make_learner

        self.learner = make_learner(cfg, policy_path, reference=reference, reference_weights=reference_weights)
        self.sync = None
        if with_sync and cfg.runtime.weight_sync != "collective":  # the collective backend joins a group instead
            from actors.weight_sync import make_weight_sync  # auto: tmpfs for the learner's node, a group for the others

            self.sync = make_weight_sync(file_backend(cfg), run_id=f"{run_id}-learner")

    def step(self, scored) -> dict:
        with self.learner.autocast():
            return self.learner.step(scored)

    def join_group(self, rank: int, world: int, address: str, port: int, backend: str = "auto") -> str:
        """Join the learner group (learner/parallel.py) as ``rank`` of ``world``; returns the backend used."""
        from learner.parallel import init_group

        if backend == "auto":
            backend = "nccl" if self.learner.device.type == "cuda" else "gloo"
        self.learner.dp = init_group(rank=rank, world=world, address=address, port=port, backend=backend)
        if self.learner.cfg.runtime.learner.sharding == "fsdp2":
            self.learner.shard()  # each rank now holds its shard (learner/parallel.py: shard_fsdp2)
        return backend

    def param_checksum(self) -> float:
        """Sum of every weight (float64): equal on all ranks of a learner group while they stay in sync. Sharded (fsdp2; every
        rank calls it at once) the sum of every rank's shards, the same on all ranks by construction."""
        with torch.no_grad():
            if self.learner.sharded:
                import torch.distributed as dist

                t = torch.tensor([float(sum(p.to_local().double().sum() for p in self.learner.model.parameters()))], dtype=torch.float64)
                dist.all_reduce(t)
                return float(t.item())
            return float(sum(p.detach().double().sum() for p in self.learner.model.parameters()))

    def publish(self) -> tuple[object, int, float]:
        """Publish the current policy weights; returns (handle, version, seconds). Sharded (fsdp2), every rank calls it: the
        tensors are gathered one at a time, rank 0 writes each into the sync's file, the others return a None handle."""
        t = time.perf_counter()
        sd = self.learner.policy_state_dict()
        if self.learner.sharded and self.learner.dp.rank != 0:
            from actors.weight_sync import sync_tensors
            from learner.parallel import full

            for _, x in sync_tensors(sd.items()):  # the same gathers, in rank 0's order
                full(x)
            return None, self.learner.version, time.perf_counter() - t
        handle = self.sync.send(sd.items(), self.learner.version)  # the backends copy to the CPU
        return handle, self.learner.version, time.perf_counter() - t

    def version(self) -> int:
        return self.learner.version

    # -- the collective weight sync (actors/collective.py): this learner is rank 0 ----------------------
    def weight_backend(self) -> str:
        return "nccl" if self.learner.device.type == "cuda" else "gloo"

    def weights_meta(self):
        from actors.collective import describe, with_tied_head

        return describe(with_tied_head(self.learner.policy_state_dict()))

    def join_weight_group(self, address: str, port: int, world: int) -> None:
        from actors.collective import CollectiveSender

        self.sender = CollectiveSender(self.weight_backend(), address, port, world, self.learner.device)

    def broadcast_weights(self, bucket_mb: float) -> tuple[int, float]:
        """Send the current policy to every member of the weight group; returns (version, seconds)."""
        from actors.collective import with_tied_head

        return self.learner.version, self.sender.send(with_tied_head(self.learner.policy_state_dict()), bucket_mb)

    def reset_now(self) -> int:
        self.learner.reset_now()
        return self.learner.version

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def save(self, path: str) -> None:
        """Write the checkpoint. Sharded (fsdp2) every rank calls it (the state is gathered) and rank 0 writes it."""
        sd = self.learner.state_dict()
        if not self.learner.sharded or self.learner.dp.rank == 0:
            torch.save(sd, path)

    def load(self, path: str) -> int:
        self.learner.load_state_dict(torch.load(path, weights_only=False, map_location=self.learner.device))
        return self.learner.version

    def set_kl(self, coef: float | None = None, target: float | None = None) -> dict:
        return set_kl(self.learner.kl_ctl, coef=coef, target=target)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.learner.dp.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
