"""Warm actors across runs: one set of Ray actors (rollout engines, the reward and gold actors) serves every run (a sweep's
cell, `tether reproduce`'s cells across stages, a config's variants in `tether train`) in a row whose actors would be
the same (actors/roleset.py::warm_key: runtime settings and the models loaded), instead of each starting Ray actors,
vLLM and every reward model afresh. Each run gets a fresh learner group and its own initial weights, sampling settings
and seeds (RayRoleSet.rebind), so its results are those of a cold start (tested in tests/integration/test_warm_sweep.py).

A run that fails, or whose actors were restarted (Ray's restart budget is per actor, not per run), hands its actors
back broken: they are closed and the next run starts a new set (RayRoleSet.shareable). One set is kept at a time.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class WarmRoles:
    """The role sets of consecutive runs: ``acquire`` (the Trainer's, instead of make_roleset) and ``release``; ``close``
    at the end. ``counts``: how many runs got a new set (cold) and how many a rebound one (warm)."""

    def __init__(self) -> None:
        self.roles = None
        self.counts = {"cold": 0, "warm": 0}

    def acquire(self, cfg, paths):
        from actors.roleset import make_roleset, warm_key

        key = warm_key(cfg, paths)
        held = self.roles
        if held is not None and key is not None and key == held.key:
            self.roles = None  # not handed out twice; release puts it back
            try:
                held.rebind(cfg, paths)
            except Exception:
                log.warning("rebinding the warm actors failed: starting new ones", exc_info=True)
                _close(held)
            else:
                self.counts["warm"] += 1
                return held
        elif held is not None:
            log.info("the next cell needs other actors (runtime settings or models differ): starting a new set")
            self.close()
        self.counts["cold"] += 1
        return make_roleset(cfg, paths)

    def release(self, roles, *, ok: bool) -> None:
        """A run is done with ``roles``: kept for the next one when it ended well (``ok``) and the set is shareable (no actor
        restarted, its key allows sharing); closed otherwise."""
        if not (ok and getattr(roles, "shareable", False)):  # RayRoleSet.shareable; a local set never is
            _close(roles)
            return
        if self.roles is not None and self.roles is not roles:
            _close(self.roles)
        self.roles = roles

    def close(self) -> None:
        if self.roles is not None:
            _close(self.roles)
            self.roles = None


def _close(roles) -> None:
    try:
        roles.close()
    except Exception:  # noqa: BLE001 - actors already gone (a crash); the next set is started regardless
        log.warning("closing a role set failed", exc_info=True)
