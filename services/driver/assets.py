"""The models a run loads: the task's resolved assets, the policy every role starts from (the task's start, e.g. SALSA's
soup, with the algorithm's extra tokens: Quark's reward tokens) and pi_0, the one model drift is measured from."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from learner.learners import learner_class


def resolve_policies(cfg, task, run_dir: Path, *, cfg_source: str):
    """Returns (the task's paths with policy and drift_policy set, the algorithm's learner class, its control token ids)."""
    paths = task.resolve(cfg_source=cfg_source)
    # The algorithm's hooks: the policy folder every role loads (Quark adds reward tokens to it) and the control
    # tokens sampling may be conditioned on.
    algorithm = learner_class(cfg.algorithm)
    paths = task.start_policy(paths, run_dir)  # e.g. SALSA's soup: the policy starts from it
    start = paths.policy
    policy, control_ids = algorithm.prepare_policy(cfg, start, run_dir)
    # Drift is measured from one common model for every method: pi_0 (with the algorithm's extra tokens, so that
    # it can score every sampled token), whatever the run starts from or regularises towards.
    base = paths.base_policy or start
    drift = policy if str(base) == str(start) else algorithm.prepare_policy(cfg, base, run_dir / "drift")[0]
    return dataclasses.replace(paths, policy=policy, drift_policy=drift), algorithm, control_ids
