"""The main job's driver: rollout -> reward -> learn -> sync -> (gold evaluation), one iteration at a time.

This is the single-process form: every role is a plain class in this process. The actor-learner
runtime runs the same roles as Ray actors.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learner.assets.build import resolve, set_threads
from learner.assets.data import load_imdb, make_prompts
from learner.config import TetherConfig
from services.runlog import RunLog

log = logging.getLogger(__name__)


@dataclass
class Roles:
    engine: object  # generate(prompts, seed) -> Rollouts; load_weights(sd, version)
    ensemble: object  # score(rollouts, gold=) -> ScoredRollouts
    evaluator: object  # evaluate(rollouts, prefix=) -> dict
    learner: object  # step(scored) -> dict; policy_state_dict(); version
    gold: object


def build_local_roles(cfg: TetherConfig, *, cfg_source: str = "<config>") -> Roles:
    from transformers import AutoTokenizer

    from learner.assets.gold import load_gold
    from learner.assets.policy import load_policy
    from learner.gold_eval import GoldEvaluator
    from learner.ppo_learner import PPOLearner
    from learner.reward import ProxyEnsemble
    from learner.rollout import TransformersEngine

    paths = resolve(cfg, cfg_source=cfg_source)
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    init_lm = load_policy(paths.policy)
    gold = load_gold(paths.gold)
    return Roles(
        engine=TransformersEngine(copy.deepcopy(init_lm), tok, cfg.generation),
        ensemble=ProxyEnsemble(paths.proxies, aggregation=cfg.ensemble.aggregation, uwo_lambda=cfg.ensemble.lam, max_len=cfg.proxy.max_len),
        evaluator=GoldEvaluator(gold, copy.deepcopy(init_lm), tok.pad_token_id),
        learner=PPOLearner(cfg, init_lm, pad_id=tok.pad_token_id),
        gold=gold,
    )


def iteration_metrics(scored) -> dict[str, float]:
    s = np.asarray(scored.proxy_scores)  # (B, k)
    out = {
        "reward/proxy_mean": float(np.mean(scored.reward)),
        "ensemble/std": float(np.mean(scored.spread)),
        "reward/gold_mean": float(np.mean(scored.gold)) if scored.gold is not None else float("nan"),
    }
    for i in range(s.shape[1]):
        out[f"reward/proxy_member_{i}"] = float(s[:, i].mean())
    out["reward/proxy_member_mean"] = float(s.mean())
    return out


def train(cfg: TetherConfig, run_dir: Path, *, cfg_source: str = "<config>", progress: bool = True, roles: Roles | None = None) -> dict:
    """Run cfg.train.iterations PPO iterations; metrics go to run_dir. Returns the last metrics."""
    set_threads(cfg.train.threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    roles = roles or build_local_roles(cfg, cfg_source=cfg_source)
    split = load_imdb(cfg.task)
    eval_prompts = make_prompts(split.heldout_text, cfg.train.eval_prompts, cfg.task, seed=cfg.train.seed + 99991)
    runlog = RunLog(run_dir)
    last: dict = {}
    bar = tqdm(range(cfg.train.iterations), desc=f"train {cfg.name}", unit="it", disable=not progress)
    for it in bar:
        m: dict[str, float] = {}
        if it % cfg.train.eval_every == 0:
            m.update(evaluate(cfg, roles, eval_prompts, it))
        t = time.time()
        prompts = make_prompts(split.train_text, cfg.ppo.batch_size, cfg.task, seed=cfg.train.seed * 1_000_003 + it)
        rollouts = roles.engine.generate(prompts, seed=cfg.train.seed * 1_000_003 + it)
        m["time_s/rollout"] = time.time() - t
        m["perf/rollout_tokens_per_s"] = sum(len(x) for x in rollouts.response_ids) / max(m["time_s/rollout"], 1e-9)
        t = time.time()
        scored = roles.ensemble.score(rollouts, gold=roles.gold)
        m["time_s/reward"] = time.time() - t
        m.update(iteration_metrics(scored))
        t = time.time()
        drift = roles.evaluator.evaluate(rollouts, prefix="train")
        m["kl/from_init"] = drift["train/kl_from_init_k3"]
        m["kl/from_init_k1"] = drift["train/kl_from_init_k1"]
        m["drift/ppl_under_init"] = drift["train/ppl_under_init"]
        m["time_s/drift"] = time.time() - t
        m.update(roles.learner.step(scored))
        t = time.time()
        roles.engine.load_weights(roles.learner.policy_state_dict(), roles.learner.version)
        m["time_s/sync"] = time.time() - t
        runlog.log(it + 1, m)
        last = m
        bar.set_postfix(proxy=f"{m['reward/proxy_mean']:.3f}", gold=f"{m['reward/gold_mean']:.3f}", kl=f"{m['kl/from_init']:.2f}", refresh=False)
        if not progress:
            continue
        tqdm.write(
            f"[{cfg.name}] it {it + 1:3d}  proxy {m['reward/proxy_mean']:+.3f}  gold {m['reward/gold_mean']:+.3f}  "
            f"KL(init) {m['kl/from_init']:.3f}  beta {m['kl/coef']:.4f}" + ("  RESET" if m.get("elastic_reset/event") else "")
        )
    final = evaluate(cfg, roles, eval_prompts, cfg.train.iterations)
    runlog.log(cfg.train.iterations, final)
    runlog.close()
    summary = {**{k: v for k, v in last.items() if k.startswith(("reward/", "kl/", "drift/"))}, **final}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate(cfg: TetherConfig, roles: Roles, prompts: list[str], it: int) -> dict[str, float]:
    t = time.time()
    with torch.no_grad():
        r = roles.engine.generate(prompts, seed=10_000_019)  # same seed every time: correlated samples, lower-variance curves
        out = roles.evaluator.evaluate(r, prefix="eval")
        out["eval/proxy_mean"] = float(np.mean(roles.ensemble.score(r).reward))
    out["time_s/gold_eval"] = time.time() - t
    return out
