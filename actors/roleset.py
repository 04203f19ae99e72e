"""The four roles behind one small interface: the plain workers of actors/workers.py in this process
(LocalRoleSet, runtime.mode=local) or the Ray actors that wrap them, on one placement group (RayRoleSet).

The training loop (services/driver/train.py) sees only this interface, so the same loop runs both ways.
"""
from __future__ import annotations

import logging
import time
import uuid

from actors.recovery import Recovery, _node
from learner.config import TetherConfig
from learner.types import Rollouts, ScoredRollouts
from tasks.contract import TaskPaths

log = logging.getLogger(__name__)


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    first = parts[0]
    return Rollouts(
        prompts=[p for r in parts for p in r.prompts], prompt_ids=[p for r in parts for p in r.prompt_ids],
        response_ids=[p for r in parts for p in r.response_ids], behaviour_logprobs=[p for r in parts for p in r.behaviour_logprobs],
        responses=[p for r in parts for p in r.responses], policy_version=min(r.policy_version for r in parts), engine=first.engine,
        n_prefix=first.n_prefix, meta=[m for r in parts for m in r.meta], groups=[g for r in parts for g in r.groups],
    )


def spec(x):
    """A scorer for a role: a scorer config (a dict) as it is, a path or a name as a string."""
    return x if isinstance(x, dict) else str(x)


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
        self.reward = RewardWorker(cfg, [spec(p) for p in paths.proxies])
        self.gold = GoldWorker(cfg, spec(paths.gold), str(paths.drift_policy or paths.policy))
        self.learner = LearnerWorker(cfg, str(paths.policy), run_id, [str(p) for p in paths.reference], list(paths.reference_weights),
                                     with_sync=False)

    def generate(self, prompts: list[str], seed: int, prefix_ids: list[int] | None = None, prompt_ids: list[list[int]] | None = None) -> Rollouts:
        return self.rollout.generate(prompts, seed, prefix_ids, prompt_ids)

    def score_and_drift(self, rollouts: Rollouts, prefix: str) -> tuple[ScoredRollouts, dict]:
        scored = self.reward.score(rollouts)
        drift, gold = self.gold.drift_and_gold(rollouts, prefix)
        return with_gold(scored, gold), drift

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


# Runtime settings a run's driver or its fresh learner reads, not the actors a warm sweep keeps (RayRoleSet.rebind).
PER_RUN_RUNTIME = ("checkpoint_every", "keep_checkpoints", "max_staleness", "pipeline", "restart_timeout_s", "connect_timeout_s")
PER_RUN_LEARNER = ("threads", "device", "backend", "precision", "gradient_checkpointing", "compile")


def warm_key(cfg: TetherConfig, paths: TaskPaths) -> str | None:
    """What the actors a run builds depend on: two runs with the same key can share rollout engines, reward and gold actors
    (a warm sweep, services/driver/warm.py). Every runtime setting but the per-run ones above (the placement's
    bundles include the learner's resources), and the models the engines, the ensemble, the gold and the drift load; not
    the sampling settings, seeds or algorithm, which rebind hands over. None: never shared (local mode; the collective
    weight sync, whose group includes the learner)."""
    import json

    rt = cfg.runtime
    if rt.mode != "ray" or rt.weight_sync == "collective":
        return None
    d = rt.model_dump(mode="json", exclude=set(PER_RUN_RUNTIME))
    d["learner"] = {k: v for k, v in d["learner"].items() if k not in PER_RUN_LEARNER}
    d["vllm_in_actor"] = cfg.vllm_in_actor
    models = {"policy": str(paths.policy), "proxies": [spec(p) for p in paths.proxies], "gold": spec(paths.gold),
              "drift": str(paths.drift_policy or paths.policy)}
    return json.dumps({"runtime": d, "models": models}, sort_keys=True, default=str)


def collective_receivers(weight_sync: str, learner_node: str, rollout_nodes: list[str]) -> list[int]:
    """The rollout actors (indices) that take the weights through the collective group; the others read a file handle.
    auto: those on another node than the learner; collective: all; tmpfs / object_store: none."""
    if weight_sync == "auto":
        return [i for i, n in enumerate(rollout_nodes) if n != learner_node]
    return list(range(len(rollout_nodes))) if weight_sync == "collective" else []


class RayRoleSet(Recovery):
    """Rollout actors (vLLM or transformers), a reward actor, a gold actor and the learner, on one placement group."""

    def __init__(self, cfg: TetherConfig, paths: TaskPaths):
        import signal
        import threading

        import ray

        from actors.placement import connect, place
        from actors.roles import GoldActor, RewardActor, RolloutActor

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
        self.key = warm_key(cfg, paths)
        self.run_id = run_id = f"{cfg.name}-{uuid.uuid4().hex[:8]}"
        pol, gold, drift = str(paths.policy), spec(paths.gold), str(paths.drift_policy or paths.policy)
        self.rollout = [RolloutActor.options(**self._options("rollout", i, rt.rollout), name=None).remote(cfg, pol, i, run_id)
                        for i in range(rt.rollout_actors)]
        self.reward = RewardActor.options(**self._options("reward", 0, rt.reward)).remote(cfg, [spec(p) for p in paths.proxies])
        self.gold = GoldActor.options(**self._options("gold", 0, rt.gold)).remote(cfg, gold, drift)
        self._rebound: tuple | None = None  # (cfg, paths) after rebind: what a restarted actor (built from the first run's) takes again
        self._start_learners(paths)
        # Wait for every constructor here, so a failure surfaces at start-up with its actor's name.
        ray.get([a.policy_version.remote() for a in self.rollout])
        self._wait_learners()
        # Which rollout actors take the weights through the collective group, and which through a file handle
        # (tmpfs / object store). auto: the learner's node -> tmpfs, any other node -> collective.
        self.nodes = dict(zip(["learner", *[f"rollout-{i}" for i in range(len(self.rollout))]],
                              ray.get([a.__ray_call__.remote(_node) for a in [self.learner, *self.rollout]])))
        remote = collective_receivers(rt.weight_sync, self.nodes["learner"], [self.nodes[f"rollout-{i}"] for i in range(len(self.rollout))])
        if remote and rt.learner.sharding != "none":
            raise ValueError(f"runtime.learner.sharding {rt.learner.sharding!r}: rollout actors {remote} are on another node than the learner, "
                             "and the collective weight sync does not gather sharded weights: set runtime.weight_sync: object_store "
                             "(across nodes), or place the rollout actors on the learner's node")
        self.collective_rollouts = [self.rollout[i] for i in remote]
        self.file_rollouts = [a for i, a in enumerate(self.rollout) if i not in remote]
        self._weight_group: dict | None = None  # the collective sync's group: set up now, rebuilt after a restart
        if self.collective_rollouts:
            self._join_weight_group()

    @property
    def shareable(self) -> bool:
        """Whether the next run may take this set (services/driver/warm.py): its key allows sharing, no actor restarted (Ray's
        restart budget is per actor) and no rollout actor is in a collective weight group (whose rank 0 is the learner)."""
        return self.key is not None and not self.restarts and not self.collective_rollouts

    def _options(self, role: str, i: int, res) -> dict:
        return {**self.placement.options(role, i, res), "max_restarts": self.cfg.runtime.max_restarts}

    def _start_learners(self, paths: TaskPaths) -> None:
        """A fresh learner group for the run (each rank its own process); its per-run recovery state starts empty."""
        from actors.roles import LearnerActor

        cfg, rt = self.cfg, self.cfg.runtime
        self.uwo_lambda = None  # a live change (set_uwo_lambda) to re-apply to a restarted reward actor
        self.restarts: dict[str, int] = {}  # role -> actor restarts survived (metrics: runtime/restarts_<role>)
        self._pids: dict[str, int] = {}  # actor id -> process id after its latest restart
        self.learners = [LearnerActor.options(**self._options("learner", i, rt.learner)).remote(
            cfg, str(paths.policy), self.run_id, [str(p) for p in paths.reference], list(paths.reference_weights)) for i in range(rt.learner.ranks)]
        self.learner = self.learners[0]  # rank 0: publishes the weights, saves checkpoints, answers for the group

    def _wait_learners(self) -> None:
        self._ray.get([a.version.remote() for a in self.learners])
        self.learner_backend = self._join_group()
        self._note_pids(self.learners)

    def rebind(self, cfg: TetherConfig, paths: TaskPaths) -> None:
        """Serve another run with the same actors (a warm sweep's next cell; its ``warm_key`` must equal this set's): a fresh
        learner group, the rollout engines keep their loaded model and take the run's sampling settings and, by one sync, its
        initial weights; the reward and gold actors rebuild their models in their processes. Nothing of the previous run is
        left: no weights, no KL state, no restart counts, no live settings."""
        if warm_key(cfg, paths) != self.key:
            raise ValueError("rebind: this run needs other actors (its runtime settings or task assets differ); start a new role set")
        ray = self._ray
        try:
            ray.get([a.close.remote() for a in self.learners], timeout=30)
        except Exception:  # noqa: BLE001 - a broken learner is killed below either way
            log.warning("closing the previous run's learner failed", exc_info=True)
        for a in self.learners:
            ray.kill(a, no_restart=True)
        self.cfg, self.run_id = cfg, f"{cfg.name}-{uuid.uuid4().hex[:8]}"
        self._rebound = (cfg, paths)
        self._start_learners(paths)  # starts while the others rebind
        ray.get([a.rebind.remote(cfg, self.run_id, i) for i, a in enumerate(self.rollout)]
                + [self.reward.rebind.remote(cfg, [spec(p) for p in paths.proxies]),
                   self.gold.rebind.remote(cfg, spec(paths.gold), str(paths.drift_policy or paths.policy))])
        self._wait_learners()
        self.sync()  # the run's initial weights (its learner's) into every engine, at version 0

    def _rebind_restarted(self, role: str, actor) -> None:
        """A restarted actor was rebuilt by Ray from the first run's arguments: give it the current run's again."""
        if self._rebound is None:
            return
        cfg, paths = self._rebound
        if role == "rollout":
            self._ray.get(actor.rebind.remote(cfg, self.run_id, next(i for i, a in enumerate(self.rollout) if a is actor)))
        elif role == "reward":
            self._ray.get(actor.rebind.remote(cfg, [spec(p) for p in paths.proxies]))
        else:
            self._ray.get(actor.rebind.remote(cfg, spec(paths.gold), str(paths.drift_policy or paths.policy)))

    def generate(self, prompts: list[str], seed: int, prefix_ids: list[int] | None = None, prompt_ids: list[list[int]] | None = None) -> Rollouts:
        n = len(self.rollout)
        chunks = [prompts[i::n] for i in range(n)]  # interleaved split; re-ordered below
        ids = [None if prompt_ids is None else prompt_ids[i::n] for i in range(n)]
        refs = [(i, a, a.generate.remote(c, seed * 1009 + i, prefix_ids, ids[i])) for i, (a, c) in enumerate(zip(self.rollout, chunks)) if c]
        parts = []
        for i, a, ref in refs:  # all were submitted: they run in parallel; a lost one is regenerated with its own seed
            first = [ref]
            parts.append(self._retry("rollout", a, lambda x, i=i: first.pop() if first else x.generate.remote(chunks[i], seed * 1009 + i, prefix_ids, ids[i]),
                                     after_restart=lambda a=a: self._resync(a)))
        if n == 1:
            return parts[0]
        merged = concat_rollouts(parts)
        order = [j for i in range(n) for j in range(i, len(prompts), n)]  # position in merged -> original index
        return merged.take(sorted(range(len(order)), key=lambda k: order[k]))

    def score_and_drift(self, rollouts: Rollouts, prefix: str) -> tuple[ScoredRollouts, dict]:
        ref = self._ray.put(rollouts)  # one copy in the object store, read by both actors
        first = {"score": self.reward.score.remote(ref), "gold": self.gold.drift_and_gold.remote(ref, prefix)}  # the judge scores once
        again = {"score": lambda a: a.score.remote(ref), "gold": lambda a: a.drift_and_gold.remote(ref, prefix)}
        out = {}
        for key, role, actor, after in (("score", "reward", self.reward, self._restore_reward),
                                        ("gold", "gold", self.gold, lambda: self._rebind_restarted("gold", self.gold))):
            pending = [first[key]]
            out[key] = self._retry(role, actor, lambda a, key=key, pending=pending: pending.pop() if pending else again[key](a), after_restart=after)
        drift, gold = out["gold"]
        return with_gold(out["score"], gold), drift

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
        """The learner's weights to every rollout actor: by file handle (tmpfs / object store) and/or by the collective
        group, as runtime.weight_sync placed each actor."""
        t = time.perf_counter()
        out: dict[str, float] = {"sync/collective_receivers": float(len(self.collective_rollouts)),
                                 "sync/file_receivers": float(len(self.file_rollouts))}
        if self.file_rollouts:
            handle, version, send_s = self._publish()
            recv = [self._retry("rollout", a, lambda x: x.load.remote(handle, version), after_restart=lambda a=a: self._resync(a))
                    for a in self.file_rollouts]
            out.update({"time_s/sync_send": send_s, "time_s/sync_receive": max(r or 0.0 for r in recv)})
        if self.collective_rollouts:
            c = self._sync_collective_retrying()
            out["time_s/sync_send"] = out.get("time_s/sync_send", 0.0) + c["time_s/sync_send"]
            out["time_s/sync_receive"] = max(out.get("time_s/sync_receive", 0.0), c["time_s/sync_receive"])
        out["time_s/sync"] = time.perf_counter() - t
        return out

    @property
    def sharded(self) -> bool:
        return self.cfg.runtime.learner.sharding != "none"

    def _publish(self) -> tuple:
        """(handle, version, seconds) of the learner's weights in the file sync; sharded, every rank takes part in the gathers
        and rank 0's handle is the one."""
        if self.sharded:
            return self._learner_call(lambda: self._ray.get([a.publish.remote() for a in self.learners]))[0]
        return self._learner_call(lambda: self._ray.get(self.learner.publish.remote()))

    def save(self, path: str) -> None:
        if self.sharded:  # every rank gathers; rank 0 writes
            self._learner_call(lambda: self._ray.get([a.save.remote(path) for a in self.learners]))
        else:
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
