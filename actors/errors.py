"""The runtime's setup error, in a module that imports no Ray: a local-mode command (`tether bon`, a local `tether train`)
catches it without loading Ray; actors/placement.py raises it."""
from __future__ import annotations


class RuntimeSetupError(RuntimeError):
    """Ray could not be reached, or the actors cannot be placed: the message says what to change."""
