"""What keeps a Ray run alive when an actor dies, and the collective weight group: a mixin of RayRoleSet
(actors/roleset.py), kept apart so that the role set reads as the four roles and their calls.

Rollout, reward and gold actors are restarted by Ray (runtime.max_restarts); a lost call is repeated with its own
inputs (seeds included) once the actor is back with the current weights and settings. A lost learner rank brings
every rank back and raises LearnerLost: the driver restores the latest checkpoint (services/driver/train.py).
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def _pid(actor_self) -> int:
    import os

    return os.getpid()


def _node(actor_self) -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class LearnerLost(RuntimeError):
    """The learner (a rank of its group) died; Ray restarted it from scratch. The driver restores the latest
    checkpoint and redoes the iterations since (services/driver/train.py)."""


class RoleLost(RuntimeError):
    """An actor died more often than runtime.max_restarts allows, or did not come back in time."""


class Recovery:
    """Needs ``self._ray``, ``self.cfg``, ``self.rollout``, ``self.learners`` / ``self.learner``, ``self.reward``,
    ``self.collective_rollouts``, ``self.restarts``, ``self._pids``, ``self.uwo_lambda``, ``self._weight_group`` and
    ``self._rebind_restarted(role, actor)``."""

    def _join_weight_group(self) -> None:
        """Learner rank 0 and every rollout engine's workers in one process group (actors/collective.py)."""
        ray = self._ray
        sizes = ray.get([a.weight_group_size.remote() for a in self.collective_rollouts])
        world = 1 + sum(sizes)
        address, port = ray.get(self.learner.rendezvous.remote())
        starts = [1 + sum(sizes[:i]) for i in range(len(sizes))]
        backend = ray.get(self.learner.weight_backend.remote())
        ray.get([self.learner.join_weight_group.remote(address, port, world)]
                + [a.join_weight_group.remote(backend, address, port, r, world) for a, r in zip(self.collective_rollouts, starts)],
                timeout=self.cfg.runtime.connect_timeout_s * 4)
        self._weight_group = {"world": world, "backend": backend, "meta": ray.get(self.learner.weights_meta.remote())}
        log.info("collective weight sync: %d ranks (%s), rank 0 the learner at %s:%d", world, backend, address, port)

    # -- fault tolerance ---------------------------------------------------------------------------
    def _join_group(self) -> str | None:
        if len(self.learners) == 1:
            return None
        ray, n = self._ray, len(self.learners)
        address, port = ray.get(self.learner.rendezvous.remote())
        backends = ray.get([a.join_group.remote(i, n, address, port, self.cfg.runtime.learner.backend) for i, a in enumerate(self.learners)],
                           timeout=self.cfg.runtime.connect_timeout_s * 4)
        log.info("learner group: %d ranks, %s, rank 0 at %s:%d", n, backends[0], address, port)
        return backends[0]

    def _back(self, role: str, actor, error: Exception) -> None:
        """Wait until Ray has restarted ``actor`` (a constructor that runs again), or raise RoleLost."""
        ray, rt = self._ray, self.cfg.runtime
        log.warning("the %s actor died (%s); waiting for Ray to restart it", role, str(error).splitlines()[0][:200])
        t = time.perf_counter()
        while True:
            try:
                pid = ray.get(actor.__ray_call__.remote(_pid), timeout=rt.restart_timeout_s)  # queued until the restart is done
                break
            except ray.exceptions.ActorUnavailableError:  # restarting: try again
                if time.perf_counter() - t > rt.restart_timeout_s:
                    raise RoleLost(f"the {role} actor did not come back within runtime.restart_timeout_s={rt.restart_timeout_s:g}s") from error
                time.sleep(0.5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                raise RoleLost(f"the {role} actor is gone for good (restarts exhausted or unschedulable): {e}") from error
        key = actor._actor_id.hex()
        if self._pids.get(key) != pid:  # a new process (not another call lost in a death already counted)
            self.restarts[role] = self.restarts.get(role, 0) + 1
            if self.restarts[role] > rt.max_restarts * max(1, len(self.rollout) if role == "rollout" else len(self.learners) if role == "learner" else 1):
                raise RoleLost(f"the {role} actor died {self.restarts[role]} times (runtime.max_restarts is {rt.max_restarts}): {error}") from error
        self._pids[key] = pid
        log.warning("the %s actor is back after %.1fs (pid %d)", role, time.perf_counter() - t, pid)

    def _note_pids(self, actors) -> list[int]:
        pids = self._ray.get([a.__ray_call__.remote(_pid) for a in actors])
        for a, pid in zip(actors, pids):
            self._pids[a._actor_id.hex()] = pid
        return pids

    def _check_learners(self) -> None:
        """A rank that died between two calls comes back silently, at the initial weights: catch that before it trains."""
        known = [self._pids.get(a._actor_id.hex()) for a in self.learners]
        now = self._ray.get([a.__ray_call__.remote(_pid) for a in self.learners])
        if now != known:
            log.warning("learner process ids changed from %s to %s: a rank was restarted between calls", known, now)
            raise self._ray.exceptions.ActorDiedError()  # handled by _learner_call like a death seen mid-call

    def _retry(self, role: str, actor, call, *, after_restart=None):
        """ray.get(call(actor)); when the actor dies, wait for its restart, run ``after_restart`` (restore what it
        held: weights, settings) and call again. A call's inputs are explicit (seeds included), so the retry
        computes what the lost call would have."""
        while True:
            try:
                return self._ray.get(call(actor))
            except self._ray.exceptions.RayActorError as e:
                self._back(role, actor, e)
                if after_restart is not None:
                    after_restart()

    def _resync(self, actor) -> None:
        """Give a restarted rollout actor the run's settings (after a rebind) and the learner's current weights and version."""
        self._rebind_restarted("rollout", actor)
        if any(a is actor for a in self.collective_rollouts):  # its old ranks are gone: a new group, then one broadcast to all
            self._weight_group = None
            self._sync_collective_retrying()
            return
        handle, version, _ = self._publish()
        self._ray.get(actor.load.remote(handle, version))

    def _sync_collective(self) -> dict:
        ray, mb = self._ray, self.cfg.runtime.weight_bucket_mb
        t = time.perf_counter()
        if self._weight_group is None:
            self._join_weight_group()
        version = ray.get(self.learner.version.remote())
        meta = self._weight_group["meta"]
        refs = [self.learner.broadcast_weights.remote(mb), *[a.receive_collective.remote(meta, mb, version) for a in self.collective_rollouts]]
        ray.wait(refs, num_returns=len(refs), timeout=self.cfg.runtime.restart_timeout_s)
        results, errors = [], []
        for r in refs:  # every outcome, so that a member's death is told apart from the others' broken broadcast
            try:
                results.append(ray.get(r, timeout=0))
            except Exception as e:  # noqa: BLE001 - sorted below
                errors.append(e)
        if errors:
            self._weight_group = None  # a member is gone or the group broke: the next sync builds a new one
            raise next((e for e in errors if isinstance(e, ray.exceptions.RayActorError)), errors[0])
        (_, send_s), *recv = results
        return {"time_s/sync": time.perf_counter() - t, "time_s/sync_send": send_s, "time_s/sync_receive": max(recv)}

    def _sync_collective_retrying(self) -> dict:
        """A collective sync; when a rollout actor died during it, wait for its restart, rebuild the group and
        broadcast again (a lost learner raises LearnerLost, as everywhere)."""
        while True:
            try:
                return self._learner_call(self._sync_collective)
            except self._ray.exceptions.RayActorError as e:  # not the learner's: _learner_call handled that
                actor = next((a for a in self.collective_rollouts if a._actor_id.hex() == getattr(e, "actor_id", None)), None)
                if actor is None:
                    raise
                self._back("rollout", actor, e)

    def _restore_reward(self) -> None:
        self._rebind_restarted("reward", self.reward)
        if self.uwo_lambda is not None:
            self._ray.get(self.reward.set_uwo_lambda.remote(self.uwo_lambda))

    def _learner_call(self, fn):
        """Run fn (which talks to the learner group); when a rank died, bring every rank back (fresh processes,
        a new process group) and raise LearnerLost so that the driver restores the latest checkpoint."""
        try:
            return fn()
        except self._ray.exceptions.RayActorError as e:
            ray = self._ray
            if getattr(e, "actor_id", None) not in (None, *(a._actor_id.hex() for a in self.learners)):
                raise  # another role's actor
            dead = e
            if len(self.learners) > 1:
                for a in self.learners:  # the survivors hold a broken process group: restart them too
                    ray.kill(a, no_restart=False)
            for a in self.learners:
                self._back("learner", a, dead)
            self.learner_backend = self._join_group()
            self._note_pids(self.learners)
            self._weight_group = None  # the collective sync's rank 0 was a learner: a new group at the next sync
            raise LearnerLost(f"a learner rank died and was restarted: {str(e).splitlines()[0][:200]}") from e

    def restart_counts(self) -> dict[str, float]:
        return {f"runtime/restarts_{role}": float(n) for role, n in self.restarts.items()}
