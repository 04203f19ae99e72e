"""What every learner shares: the error for a command its algorithm does not have, and the KL reference.

The learners (``learner.learners.ppo``, ``.fdpg``, ``.quark``) import from here, never from the package's
``__init__`` (which builds them), so the package has no import circle.
"""
from __future__ import annotations

import copy

import torch

QUARK_META = "tether_quark.json"


class NotApplicable(ValueError):
    """A command or setting that the run's algorithm does not have (e.g. an Elastic Reset for f-DPG)."""


def load_reference(paths: list, weights: list[float], init_lm: torch.nn.Module) -> torch.nn.Module:
    """The KL reference: a copy of the start policy, or the weight soup of ``paths`` (SALSA)."""
    if not paths:
        return copy.deepcopy(init_lm)
    from learner.assets.sft import load_reference as soup

    return soup(paths, weights)
