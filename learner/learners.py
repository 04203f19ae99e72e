"""One constructor for every algorithm's learner; they share PPOLearner's interface.

Interface (what the roles call): ``step(scored) -> stats``, ``policy_state_dict()`` (the weights the
rollout engines must sample with), ``version``, ``iteration``, ``state_dict()`` / ``load_state_dict()``,
``reset_now()`` (Elastic Reset only) and ``kl_ctl`` (PPO only).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from learner.config import TetherConfig

QUARK_META = "tether_quark.json"


class NotApplicable(ValueError):
    """A command or setting that the run's algorithm does not have (e.g. an Elastic Reset for f-DPG)."""


def load_reference(paths: list, weights: list[float], init_lm: torch.nn.Module) -> torch.nn.Module:
    """The KL reference: a copy of the start policy, or the weight soup of ``paths`` (SALSA)."""
    if not paths:
        return copy.deepcopy(init_lm)
    from learner.assets.sft import load_reference as soup

    return soup(paths, weights)


def make_learner(cfg: TetherConfig, policy_path, *, reference: list | None = None, reference_weights: list[float] | None = None):
    from transformers import AutoTokenizer

    from learner.assets.policy import load_policy

    tok = AutoTokenizer.from_pretrained(str(policy_path))
    init_lm = load_policy(policy_path)
    ref = load_reference(list(reference or []), list(reference_weights or []), init_lm)
    if cfg.algorithm == "ppo":
        from learner.ppo_learner import PPOLearner

        return PPOLearner(cfg, init_lm, pad_id=tok.pad_token_id, ref_lm=ref)
    if cfg.algorithm == "fdpg":
        from learner.fdpg_learner import FDPGLearner

        return FDPGLearner(cfg, init_lm, pad_id=tok.pad_token_id, ref_lm=ref)
    from learner.quark_learner import QuarkLearner

    meta_path = Path(policy_path) / QUARK_META
    if not meta_path.exists():
        raise NotApplicable(f"{policy_path} has no reward tokens ({QUARK_META}); Quark runs start from learner.quark_learner.expand_policy's folder")
    meta = json.loads(meta_path.read_text())
    return QuarkLearner(cfg, init_lm, pad_id=tok.pad_token_id, ref_lm=ref, reward_token_ids=meta["reward_token_ids"])
