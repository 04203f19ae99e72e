"""Thin Ray shells: each builds one plain role object inside its actor and forwards calls. No maths here.

The same plain classes run in-process (runtime.mode=local), so a breakpoint works there.
"""
from __future__ import annotations

import os
import time

import numpy as np
import ray
import torch

from actors.metrics import role_metrics
from learner.config import TetherConfig


def _threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def set_kl(kl_ctl, *, coef: float | None = None, target: float | None = None) -> dict:
    """Set the KL controller's beta and/or target in place; returns the old values ({kl_coef, kl_target})."""
    old = {"kl_coef": kl_ctl.value, "kl_target": getattr(kl_ctl, "target", None)}
    if coef is not None:
        kl_ctl.value = float(coef)
    if target is not None:
        if not hasattr(kl_ctl, "target"):
            raise ValueError("kl_target applies only to kl.mode 'adaptive' (this run uses a fixed beta)")
        kl_ctl.target = float(target)
    return old


def make_engine(cfg: TetherConfig, policy_path: str, *, seed: int, run_id: str):
    """The configured rollout engine as a plain object (used by the actor and by local mode)."""
    if cfg.runtime.engine == "vllm":
        from actors.vllm_engine import VLLMEngine

        return VLLMEngine(policy_path, cfg.generation, seed=seed, kv_cache_gib=cfg.runtime.kv_cache_gib, run_id=run_id)
    from learner.rollout import TransformersEngine

    return TransformersEngine.from_path(policy_path, cfg.generation)


@ray.remote
class RolloutActor:
    def __init__(self, cfg: TetherConfig, policy_path: str, index: int, run_id: str):
        _threads(cfg.runtime.rollout.threads)
        from actors.weight_sync import make_weight_sync

        self.engine = make_engine(cfg, policy_path, seed=cfg.train.seed + index, run_id=f"{run_id}-r{index}")
        self.sync = make_weight_sync(cfg.runtime.weight_sync, run_id=f"{run_id}-r{index}")
        self.metrics = role_metrics(cfg.name, ["perf/rollout_tokens_per_s"])

    def generate(self, prompts: list[str], seed: int, prefix_ids: list[int] | None = None):
        t = time.perf_counter()
        out = self.engine.generate(prompts, seed=seed, prefix_ids=prefix_ids)
        if self.metrics:
            self.metrics.record({"perf/rollout_tokens_per_s": sum(map(len, out.response_ids)) / max(time.perf_counter() - t, 1e-9)})
        return out

    def load(self, handle, version: int) -> float:
        """Receive weights published by the learner; returns the seconds it took."""
        t = time.perf_counter()
        if hasattr(self.engine, "load_weights_from_folder"):
            folder, v = self.sync.receive_folder(handle)
            self.engine.load_weights_from_folder(folder, v)
        else:
            sd, v = self.sync.receive(handle)
            self.engine.load_weights(sd, v)
        if v != version:
            raise RuntimeError(f"weight sync delivered version {v}, expected {version}")
        return time.perf_counter() - t

    def policy_version(self) -> int:
        return self.engine.policy_version

    def close(self) -> None:
        self.sync.close()
        # ray.kill after this gives vLLM no chance to unlink its shared-memory message queues (/dev/shm/psm_*,
        # ~400 MB per engine): shut the engine down here.
        close = getattr(self.engine, "close", None)
        if close:
            close()


@ray.remote
class RewardActor:
    def __init__(self, cfg: TetherConfig, member_paths: list[str]):
        _threads(cfg.runtime.reward.threads)
        from learner.reward import ProxyEnsemble

        self.ensemble = ProxyEnsemble(member_paths, aggregation=cfg.ensemble.aggregation, uwo_lambda=cfg.ensemble.lam, max_len=cfg.proxy.max_len)
        self.metrics = role_metrics(cfg.name, ["reward/proxy_mean", "ensemble/std"])

    def score(self, rollouts):
        scored = self.ensemble.score(rollouts)
        if self.metrics:
            self.metrics.record({"reward/proxy_mean": float(np.mean(scored.reward)), "ensemble/std": float(np.mean(scored.spread))})
        return scored

    def set_uwo_lambda(self, lam: float) -> float:
        old, self.ensemble.uwo_lambda = self.ensemble.uwo_lambda, lam
        return old


@ray.remote
class GoldActor:
    def __init__(self, cfg: TetherConfig, gold_path: str, policy_path: str):
        _threads(cfg.runtime.gold.threads)
        from learner.gold_eval import GoldEvaluator

        self.evaluator = GoldEvaluator.from_paths(gold_path, policy_path)
        self.metrics = role_metrics(cfg.name, ["reward/gold_mean", "kl/from_init"])

    def evaluate(self, rollouts, prefix: str) -> dict:
        out = self.evaluator.evaluate(rollouts, prefix=prefix)
        if self.metrics and prefix == "train":
            self.metrics.record({"kl/from_init": out.get(f"{prefix}/kl_from_init_k3")})
        return out

    def gold_scores(self, texts: list[str]) -> list[float]:
        scores = self.evaluator.gold_scores(texts)
        if self.metrics and scores:
            self.metrics.record({"reward/gold_mean": float(np.mean(scores))})
        return scores


@ray.remote
class LearnerActor:
    def __init__(self, cfg: TetherConfig, policy_path: str, run_id: str, reference: list[str] | None = None,
                 reference_weights: list[float] | None = None):
        _threads(cfg.runtime.learner.threads)
        from actors.weight_sync import make_weight_sync
        from learner.learners import make_learner

        self.learner = make_learner(cfg, policy_path, reference=reference, reference_weights=reference_weights)
        self.sync = make_weight_sync(cfg.runtime.weight_sync, run_id=f"{run_id}-learner")
        self.metrics = role_metrics(cfg.name, ["kl/coef", "kl/to_ref", "loss/policy"])

    def step(self, scored) -> dict:
        out = self.learner.step(scored)
        if self.metrics:
            self.metrics.record(out)
        return out

    def publish(self) -> tuple[object, int, float]:
        """Publish the current policy weights; returns (handle, version, seconds)."""
        t = time.perf_counter()
        handle = self.sync.send(self.learner.policy_state_dict().items(), self.learner.version)
        return handle, self.learner.version, time.perf_counter() - t

    def version(self) -> int:
        return self.learner.version

    def reset_now(self) -> int:
        self.learner.reset_now()
        return self.learner.version

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def save(self, path: str) -> None:
        torch.save(self.learner.state_dict(), path)

    def load(self, path: str) -> int:
        self.learner.load_state_dict(torch.load(path, weights_only=False))
        return self.learner.version

    def set_kl(self, coef: float | None = None, target: float | None = None) -> dict:
        if self.learner.kl_ctl is None:
            raise ValueError("kl_coef/kl_target apply only to algorithm 'ppo'")
        return set_kl(self.learner.kl_ctl, coef=coef, target=target)

    def close(self) -> None:
        self.sync.close()
