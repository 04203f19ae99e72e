"""One constructor for every algorithm's learner; they share PPOLearner's interface.

Interface (what the roles call): ``step(scored) -> stats``, ``policy_state_dict()`` (the weights the
rollout engines must sample with), ``version``, ``iteration``, ``state_dict()`` / ``load_state_dict()``,
``reset_now()`` (Elastic Reset only) and ``kl_ctl`` (PPO only).
"""
from __future__ import annotations

import json
from pathlib import Path

from learner.config import TetherConfig
from learner.learners.base import QUARK_META, NotApplicable, load_reference

__all__ = ["make_learner", "learner_class", "NotApplicable", "QUARK_META", "load_reference"]


def learner_class(algorithm: str):
    """The learner class of an algorithm: its class-level hooks (``prepare_policy``, ``sampling_prefix``) let the
    driver prepare the policy and condition sampling without naming the algorithm."""
    if algorithm == "ppo":
        from learner.learners.ppo import PPOLearner

        return PPOLearner
    if algorithm == "fdpg":
        from learner.learners.fdpg import FDPGLearner

        return FDPGLearner
    if algorithm == "quark":
        from learner.learners.quark import QuarkLearner

        return QuarkLearner
    raise ValueError(f"algorithm must be ppo, fdpg or quark, got {algorithm!r}")


def make_learner(cfg: TetherConfig, policy_path, *, reference: list | None = None, reference_weights: list[float] | None = None,
                 device=None):
    """The configured algorithm's learner, with pi_0 and the reference on ``device`` (default: the one
    runtime.learner.device and num_gpus resolve to in this process; the GPU Ray assigned, else the CPU)."""
    import torch
    from transformers import AutoTokenizer

    from learner.models.device import role_device
    from learner.models.policy import load_policy
    from learner.models.tokenizer import pad_token_id

    lr = cfg.runtime.learner
    device = role_device(cfg, "learner") if device is None else torch.device(device)
    tok = AutoTokenizer.from_pretrained(str(policy_path))
    init_lm = load_policy(policy_path).to(device)
    ref = load_reference(list(reference or []), list(reference_weights or []), init_lm).to(device)
    if lr.precision == "bf16" and device.type == "cpu":
        # PyTorch's CPU SDPA backward is slow in bf16 (bench/learn_phase.py: the learn phase 1.50x faster than fp32 with SDPA,
        # 1.61x with the eager attention); the critic is copied from init_lm below, so it inherits the setting
        for m in (init_lm, ref):
            if hasattr(m, "set_attn_implementation"):
                m.set_attn_implementation("eager")
    if lr.gradient_checkpointing:  # the policy only: the reference never runs a backward pass
        init_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        init_lm.config.use_cache = False
    if cfg.algorithm == "ppo":
        from learner.learners.ppo import PPOLearner

        learner = PPOLearner(cfg, init_lm, pad_id=pad_token_id(tok), ref_lm=ref)
    elif cfg.algorithm == "fdpg":
        from learner.learners.fdpg import FDPGLearner

        learner = FDPGLearner(cfg, init_lm, pad_id=pad_token_id(tok), ref_lm=ref)
    else:
        from learner.learners.quark import QuarkLearner

        meta_path = Path(policy_path) / QUARK_META
        if not meta_path.exists():
            raise NotApplicable(f"{policy_path} has no reward tokens ({QUARK_META}); Quark runs start from learner.learners.quark.expand_policy's folder")
        meta = json.loads(meta_path.read_text())
        learner = QuarkLearner(cfg, init_lm, pad_id=pad_token_id(tok), ref_lm=ref, reward_token_ids=meta["reward_token_ids"])
    if lr.compile:
        from learner.models.policy import compile_bodies

        compile_bodies(learner.model, learner.ref)  # after the learner built its value network (a copy of the body)
    return learner
