"""The four roles behind one small interface: the plain workers of actors/workers.py in this process
(LocalRoleSet, runtime.mode=local) or the Ray actors that wrap them, on one placement group (RayRoleSet).

The training loop (services/train.py) sees only this interface, so the same loop runs both ways.
"""
from __future__ import annotations

import logging
import time
import uuid

from learner.config import TetherConfig
from learner.types import Rollouts, ScoredRollouts
from tasks.imdb.build import TaskPaths

log = logging.getLogger(__name__)


def _pid(actor_self) -> int:
    import os

    return os.getpid()


class LearnerLost(RuntimeError):
    """The learner (a rank of its group) died; Ray restarted it from scratch. The driver restores the latest
    checkpoint and redoes the iterations since (services/train.py)."""


class RoleLost(RuntimeError):
    """An actor died more often than runtime.max_restarts allows, or did not come back in time."""


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    first = parts[0]
    return Rollouts(
        prompts=[p for r in parts for p in r.prompts], prompt_ids=[p for r in parts for p in r.prompt_ids],
        response_ids=[p for r in parts for p in r.response_ids], behaviour_logprobs=[p for r in parts for p in r.behaviour_logprobs],
        responses=[p for r in parts for p in r.responses], policy_version=min(r.policy_version for r in parts), engine=first.engine,
        n_prefix=first.n_prefix,
    )


def with_gold(scored: ScoredRollouts, gold: list[float]) -> ScoredRollouts:
    scored.gold = gold
    return scored


class LocalRoleSet:
    """Every role as a plain worker in this process (actors/workers.py): no Ray (debugging, tests, breakpoints)."""

    def __init__(self, cfg: TetherConfig, paths: TaskPaths):
        from actors.workers import (
            GoldWorker,
            LearnerWorker,
            RewardWorker,
            RolloutWorker,
        )

        run_id = f"{cfg.name}-local-{uuid.uuid4().hex[:8]}"
        self.rollout = RolloutWorker(cfg, str(paths.policy), 0, run_id, with_sync=False)
        self.reward = RewardWorker(cfg, [str(p) for p in paths.proxies])
        self.gold = GoldWorker(cfg, str(paths.gold), str(paths.policy))
        self.learner = LearnerWorker(cfg, str(paths.policy), run_id, [str(p) for p in paths.reference], list(paths.reference_weights),
                                     with_sync=False)

    def generate(self, prompts: list[str], seed: int, prefix_ids: list[int] | None = None) -> Rollouts:
        return self.rollout.generate(prompts, seed, prefix_ids)

    def score_and_drift(self, rollouts: Rollouts, prefix: str) -> tuple[ScoredRollouts, dict]:
        scored = self.reward.score(rollouts)
        drift = self.gold.evaluate(rollouts, prefix)
        return with_gold(scored, self.gold.gold_scores(rollouts.texts)), drift

    def learn(self, scored: ScoredRollouts) -> dict:
        return self.learner.step(scored)

    def learner_version(self) -> int:
        return self.learner.version()

    def sync(self) -> dict:
        t = time.perf_counter()
        self.rollout.load_state_dict(self.learner.learner.policy_state_dict(), self.learner.version())
        return {"time_s/sync": time.perf_counter() - t}

    def save(self, path: str) -> None:
        self.learner.save(path)

    def load(self, path: str) -> int:
        return self.learner.load(path)

    def reset_now(self) -> None:
        self.learner.reset_now()

    def set_kl(self, *, coef: float | None = None, target: float | None = None) -> dict:
        return self.learner.set_kl(coef, target)

    def set_uwo_lambda(self, lam: float) -> float:
        return self.reward.set_uwo_lambda(lam)

    def close(self) -> None:
        self.rollout.close()
        self.learner.close()


class RayRoleSet:
    """Rollout actors (vLLM or transformers), a reward actor, a gold actor and the learner, on one placement group."""

    def __init__(self, cfg: TetherConfig, paths: TaskPaths):
        import signal
        import threading

        import ray

        from actors.placement import connect, place
        from actors.roles import GoldActor, LearnerActor, RewardActor, RolloutActor

        self._ray = ray
        self.cfg = cfg
        rt = cfg.runtime
        on_sigterm = signal.getsignal(signal.SIGTERM)
        log.info("ray: %s", connect(rt))
        if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
            # ray.init replaces a SIGTERM handler with its own sys.exit: keep the caller's (`tether train`'s
            # also stops Ray's abort watchdog, so that close() can finish).
            signal.signal(signal.SIGTERM, on_sigterm)
        self.placement = place(rt)
        run_id = f"{cfg.name}-{uuid.uuid4().hex[:8]}"
        pol, gold = str(paths.policy), str(paths.gold)
        o = lambda role, i, res: {**self.placement.options(role, i, res), "max_restarts": rt.max_restarts}  # noqa: E731
        self.rollout = [RolloutActor.options(**o("rollout", i, rt.rollout), name=None).remote(cfg, pol, i, run_id) for i in range(rt.rollout_actors)]
        self.reward = RewardActor.options(**o("reward", 0, rt.reward)).remote(cfg, [str(p) for p in paths.proxies])
        self.gold = GoldActor.options(**o("gold", 0, rt.gold)).remote(cfg, gold, pol)
        self.uwo_lambda = None  # a live change (set_uwo_lambda) to re-apply to a restarted reward actor
        self.restarts: dict[str, int] = {}  # role -> actor restarts survived (metrics: runtime/restarts_<role>)
        self._pids: dict[str, int] = {}  # actor id -> process id after its latest restart
        self.learners = [LearnerActor.options(**o("learner", i, rt.learner)).remote(
            cfg, pol, run_id, [str(p) for p in paths.reference], list(paths.reference_weights)) for i in range(rt.learner.ranks)]
        self.learner = self.learners[0]  # rank 0: publishes the weights, saves checkpoints, answers for the group
        # Wait for every constructor here, so a failure surfaces at start-up with its actor's name.
        ray.get([a.policy_version.remote() for a in self.rollout] + [a.version.remote() for a in self.learners])
        self.learner_backend = self._join_group()
        self._note_pids(self.learners)

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
        self.restarts[role] = self.restarts.get(role, 0) + 1
        if self.restarts[role] > rt.max_restarts * max(1, len(self.rollout) if role == "rollout" else len(self.learners) if role == "learner" else 1):
            raise RoleLost(f"the {role} actor died {self.restarts[role]} times (runtime.max_restarts is {rt.max_restarts}): {error}") from error
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
        if self._pids.get(key) == pid:  # another call lost in the same death: this restart is counted already
            self.restarts[role] -= 1
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
        """Give a restarted rollout actor the learner's current weights and version."""
        handle, version, _ = self._learner_call(lambda: self._ray.get(self.learner.publish.remote()))
        self._ray.get(actor.load.remote(handle, version))

    def _restore_reward(self) -> None:
        if self.uwo_lambda is not None:
            self._ray.get(self.reward.set_uwo_lambda.remote(self.uwo_lambda))

    def _learner_call(self, fn):
        """Run fn (which talks to the learner group); when a rank died, bring every rank back (fresh processes,
        a new process group) and raise LearnerLost so that the driver restores the latest checkpoint."""
        try:
            return fn()
        except self._ray.exceptions.RayActorError as e:
            ray = self._ray
            dead = e
            if len(self.learners) > 1:
                for a in self.learners:  # the survivors hold a broken process group: restart them too
                    ray.kill(a, no_restart=False)
            for a in self.learners:
                self._back("learner", a, dead)
            self.learner_backend = self._join_group()
            self._note_pids(self.learners)
            raise LearnerLost(f"a learner rank died and was restarted: {str(e).splitlines()[0][:200]}") from e

    def restart_counts(self) -> dict[str, float]:
        return {f"runtime/restarts_{role}": float(n) for role, n in self.restarts.items()}

    def generate(self, prompts: list[str], seed: int, prefix_ids: list[int] | None = None) -> Rollouts:
        n = len(self.rollout)
        chunks = [prompts[i::n] for i in range(n)]  # interleaved split; re-ordered below
        refs = [(i, a, a.generate.remote(c, seed * 1009 + i, prefix_ids)) for i, (a, c) in enumerate(zip(self.rollout, chunks)) if c]
        parts = []
        for i, a, ref in refs:  # all were submitted: they run in parallel; a lost one is regenerated with its own seed
            first = [ref]
            parts.append(self._retry("rollout", a, lambda x, i=i: first.pop() if first else x.generate.remote(chunks[i], seed * 1009 + i, prefix_ids),
                                     after_restart=lambda a=a: self._resync(a)))
        if n == 1:
            return parts[0]
        merged = concat_rollouts(parts)
        order = [j for i in range(n) for j in range(i, len(prompts), n)]  # position in merged -> original index
        return merged.take(sorted(range(len(order)), key=lambda k: order[k]))

    def score_and_drift(self, rollouts: Rollouts, prefix: str) -> tuple[ScoredRollouts, dict]:
        ref = self._ray.put(rollouts)  # one copy in the object store, read by both actors
        first = {"score": self.reward.score.remote(ref), "drift": self.gold.evaluate.remote(ref, prefix), "gold": self.gold.gold_scores.remote(rollouts.texts)}
        again = {"score": lambda a: a.score.remote(ref), "drift": lambda a: a.evaluate.remote(ref, prefix), "gold": lambda a: a.gold_scores.remote(rollouts.texts)}
        out = {}
        for key, role, actor, after in (("score", "reward", self.reward, self._restore_reward), ("drift", "gold", self.gold, None),
                                        ("gold", "gold", self.gold, None)):
            pending = [first[key]]
            out[key] = self._retry(role, actor, lambda a, key=key, pending=pending: pending.pop() if pending else again[key](a), after_restart=after)
        return with_gold(out["score"], out["gold"]), out["drift"]

    def learn(self, scored: ScoredRollouts) -> dict:
        ray = self._ray
        self._learner_call(self._check_learners)
        if len(self.learners) == 1:
            return {**self._learner_call(lambda: ray.get(self.learner.step.remote(scored))), **self.restart_counts()}
        ref = ray.put(scored)  # one copy in the object store, read by every rank
        out = self._learner_call(lambda: ray.get([a.step.remote(ref) for a in self.learners]))[0]
        sums = self._learner_call(lambda: ray.get([a.param_checksum.remote() for a in self.learners]))
        out["learner/ranks"] = float(len(sums))
        out["learner/rank_param_spread"] = max(sums) - min(sums)  # 0 while the replicas stay identical
        return {**out, **self.restart_counts()}

    def learner_version(self) -> int:
        return self._learner_call(lambda: self._ray.get(self.learner.version.remote()))

    def sync(self) -> dict:
        t = time.perf_counter()
        handle, version, send_s = self._learner_call(lambda: self._ray.get(self.learner.publish.remote()))
        recv = [self._retry("rollout", a, lambda x: x.load.remote(handle, version), after_restart=lambda a=a: self._resync(a)) for a in self.rollout]
        return {"time_s/sync": time.perf_counter() - t, "time_s/sync_send": send_s, "time_s/sync_receive": max(r or 0.0 for r in recv)}

    def save(self, path: str) -> None:
        self._learner_call(lambda: self._ray.get(self.learner.save.remote(path)))

    def load(self, path: str) -> int:
        return self._learner_call(lambda: self._ray.get([a.load.remote(path) for a in self.learners]))[0]  # every rank restores it

    def reset_now(self) -> None:
        self._learner_call(lambda: self._ray.get([a.reset_now.remote() for a in self.learners]))

    def set_kl(self, *, coef: float | None = None, target: float | None = None) -> dict:
        return self._learner_call(lambda: self._ray.get([a.set_kl.remote(coef, target) for a in self.learners]))[0]

    def set_uwo_lambda(self, lam: float) -> float:
        old = self._retry("reward", self.reward, lambda a: a.set_uwo_lambda.remote(float(lam)), after_restart=self._restore_reward)
        self.uwo_lambda = float(lam)
        return old

    def close(self) -> None:
        ray = self._ray
        try:
            ray.get([a.close.remote() for a in [*self.rollout, *self.learners]], timeout=30)
        except Exception:  # noqa: BLE001 - best effort clean-up of tmpfs folders
            log.warning("weight-sync clean-up failed", exc_info=True)
        for a in [*self.rollout, self.reward, self.gold, *self.learners]:
            ray.kill(a)
        self.placement.remove()


def make_roleset(cfg: TetherConfig, paths: TaskPaths):
    return RayRoleSet(cfg, paths) if cfg.runtime.mode == "ray" else LocalRoleSet(cfg, paths)
