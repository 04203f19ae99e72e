"""One constructor for every algorithm's learner; they share PPOLearner's interface.

Interface (what the roles call): ``step(scored) -> stats``, ``policy_state_dict()`` (the weights the
rollout engines must sample with), ``version``, ``iteration``, ``state_dict()`` / ``load_state_dict()``,
``reset_now()`` (Elastic Reset only) and ``kl_ctl`` (PPO only).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from learner.config import TetherConfig
from learner.learners.base import QUARK_META, NotApplicable, load_reference

__all__ = ["make_learner", "learner_class", "NotApplicable", "QUARK_META", "load_reference"]


# algorithm -> "module:class"; the keys are the config's Algorithm names (learner.types; tests/unit/test_ppo_learner.py checks both agree)
LEARNERS = {"ppo": "learner.learners.ppo:PPOLearner", "fdpg": "learner.learners.fdpg:FDPGLearner", "quark": "learner.learners.quark:QuarkLearner"}


def learner_class(algorithm: str):
    """The learner class of an algorithm: its class-level hooks (``prepare_policy``, ``sampling_prefix``,
    ``resets_elastically``) let the driver prepare the policy and condition sampling without naming the algorithm."""
    if algorithm not in LEARNERS:
        raise ValueError(f"algorithm must be one of {', '.join(LEARNERS)}, got {algorithm!r}")
    module, name = LEARNERS[algorithm].split(":")
    return getattr(importlib.import_module(module), name)


def make_learner(cfg: TetherConfig, policy_path, *, reference: list | None = None, reference_weights: list[float] | None = None,
                 device=None):
    """The configured algorithm's learner, with pi_0 and the reference on ``device`` (default: the one
    runtime.learner.device and num_gpus resolve to in this process; the GPU Ray assigned, else the CPU)."""
    import torch
    from transformers import AutoTokenizer

    from learner.models.device import resolve_precision, role_device
    from learner.models.policy import load_policy
    from learner.models.tokenizer import pad_token_id

    lr = cfg.runtime.learner
    device = role_device(cfg, "learner") if device is None else torch.device(device)
    tok = AutoTokenizer.from_pretrained(str(policy_path))
    init_lm = load_policy(policy_path).to(device)
    # with policy.lora and no SALSA soup the learner makes the reference itself: the policy with its adapters off (no copy)
    ref = None if cfg.policy.lora is not None and not reference else \
        load_reference(list(reference or []), list(reference_weights or []), init_lm).to(device)
    precision = resolve_precision(lr.precision, device)
    if lr.precision == "auto":
        import logging

        logging.getLogger(__name__).info("runtime.learner.precision auto: %s on %s", precision, device)
    if precision == "bf16" and device.type == "cpu":
        # PyTorch's CPU SDPA backward is slow in bf16 (bench/learn_phase.py: the learn phase 1.50x faster than fp32 with SDPA,
        # 1.61x with the eager attention); the critic is copied from init_lm below, so it inherits the setting
        for m in (init_lm, ref):
            if m is not None and hasattr(m, "set_attn_implementation"):
                m.set_attn_implementation("eager")
    if lr.gradient_checkpointing:  # the policy only: the reference never runs a backward pass
        init_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        init_lm.config.use_cache = False
    learner = learner_class(cfg.algorithm).build(cfg, init_lm, pad_id=pad_token_id(tok), ref_lm=ref, policy_path=Path(policy_path))
    if lr.compile:
        from learner.models.policy import compile_bodies

        compile_bodies(learner.model, learner.ref)  # after the learner built its value network (a copy of the body)
    return learner
