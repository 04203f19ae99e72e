"""Thin Ray shells over the plain role classes of actors/workers.py: each sets its torch threads and
records Ray metrics around the worker's calls. No maths here, no role logic either.

The same workers run in-process for runtime.mode=local (actors/roleset.py), so a breakpoint works there.
"""
from __future__ import annotations

import os
import time

import numpy as np
import ray
import torch

from actors.metrics import role_metrics
from actors.workers import (
    GoldWorker,
    LearnerWorker,
    RewardWorker,
    RolloutWorker,
    make_engine,
    set_kl,
)
from learner.config import TetherConfig

__all__ = ["RolloutActor", "RewardActor", "GoldActor", "LearnerActor", "make_engine", "set_kl"]


def _threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def _retag(metrics, run: str) -> None:
    if metrics is not None:
        metrics.tags = {"run": run}


@ray.remote
class RolloutActor(RolloutWorker):
    def __init__(self, cfg: TetherConfig, policy_path: str, index: int, run_id: str):
        _threads(cfg.runtime.rollout.threads)
        if cfg.vllm_in_actor:  # vLLM's engine core in this process: read when the engine starts
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        super().__init__(cfg, policy_path, index, run_id)
        self.metrics = role_metrics(cfg.name, ["perf/rollout_tokens_per_s"])

    def rebind(self, cfg: TetherConfig, run_id: str, index: int) -> None:
        # no _threads: the thread count is part of warm_key (and vLLM's CPU worker, bound to its threads, warns at each set)
        super().rebind(cfg, run_id, index)
        _retag(self.metrics, cfg.name)

    def generate(self, prompts: list[str], seed: int, prefix_ids: list[int] | None = None, prompt_ids: list[list[int]] | None = None):
        t = time.perf_counter()
        out = super().generate(prompts, seed, prefix_ids, prompt_ids)
        if self.metrics:
            self.metrics.record({"perf/rollout_tokens_per_s": sum(map(len, out.response_ids)) / max(time.perf_counter() - t, 1e-9)})
        return out


@ray.remote
class RewardActor(RewardWorker):
    def __init__(self, cfg: TetherConfig, member_paths: list):
        _threads(cfg.runtime.reward.threads)
        super().__init__(cfg, member_paths)
        self.metrics = role_metrics(cfg.name, ["reward/proxy_mean", "ensemble/std"])

    def rebind(self, cfg: TetherConfig, member_paths: list) -> None:
        """Another run's proxy ensemble (a warm sweep's next cell): rebuilt in this process, which keeps its imports."""
        RewardWorker.__init__(self, cfg, member_paths)  # its threads: part of warm_key, unchanged
        _retag(self.metrics, cfg.name)

    def score(self, rollouts):
        scored = super().score(rollouts)
        if self.metrics:
            self.metrics.record({"reward/proxy_mean": float(np.mean(scored.reward)), "ensemble/std": float(np.mean(scored.spread))})
        return scored


@ray.remote
class GoldActor(GoldWorker):
    def __init__(self, cfg: TetherConfig, gold_path, policy_path: str):
        _threads(cfg.runtime.gold.threads)
        super().__init__(cfg, gold_path, policy_path)
        self.metrics = role_metrics(cfg.name, ["reward/gold_mean", "kl/from_init"])

    def rebind(self, cfg: TetherConfig, gold_path, policy_path: str) -> None:
        """Another run's gold and pi_0 (a warm sweep's next cell): rebuilt in this process, which keeps its imports."""
        GoldWorker.__init__(self, cfg, gold_path, policy_path)  # its threads: part of warm_key, unchanged
        _retag(self.metrics, cfg.name)

    def evaluate(self, rollouts, prefix: str) -> dict:
        out = super().evaluate(rollouts, prefix)
        self._record(out, prefix, [])
        return out

    def gold_scores(self, samples) -> list[float]:
        scores = super().gold_scores(samples)
        self._record(None, "", scores)
        return scores

    def drift_and_gold(self, rollouts, prefix: str) -> tuple[dict, list[float]]:
        drift, scores = super().drift_and_gold(rollouts, prefix)
        self._record(drift, prefix, scores)
        return drift, scores

    def _record(self, drift: dict | None, prefix: str, scores: list[float]) -> None:
        if not self.metrics:
            return
        if drift is not None and prefix == "train":
            self.metrics.record({"kl/from_init": drift.get(f"{prefix}/kl_from_init_k3")})
        if scores:
            self.metrics.record({"reward/gold_mean": float(np.mean(scores))})


@ray.remote
class LearnerActor(LearnerWorker):
    def __init__(self, cfg: TetherConfig, policy_path: str, run_id: str, reference: list[str] | None = None,
                 reference_weights: list[float] | None = None):
        _threads(cfg.runtime.learner.threads)
        super().__init__(cfg, policy_path, run_id, reference, reference_weights)
        self.metrics = role_metrics(cfg.name, ["kl/coef", "kl/to_ref", "loss/policy"])

    def step(self, scored) -> dict:
        out = super().step(scored)
        if self.metrics and self.learner.dp.rank == 0:
            self.metrics.record(out)
        return out

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address for the learner group's process group: this node's IP and a free port on it."""
        import socket

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port
