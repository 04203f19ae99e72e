"""The trainer's side of the control plane: publish metrics to Redis, apply commands between iterations.

``RunControl.publish`` never blocks training on Redis: when the server is unreachable the metrics stay
in an in-memory buffer, in order, and go out with the next publish that reaches it. Stream entry ids
are ``<step>-<k>`` (see services/state/redis_store.py), so an XADD retried after a lost reply is refused by
the server instead of stored twice: nothing lost, no duplicates.

``RunControl.poll`` runs between iterations and applies every pending command, acknowledging each with
the step it was applied at: pause (block here, still applying commands, until resume or stop), resume,
stop (raises ``StopRequested``), reset (Elastic Reset now, then a weight sync), set (the parameters that
are safe to change while a run is going, see ``ParamUpdate``).
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Any

import redis

from services.state.params import ParamUpdate
from services.state.redis_store import RunStore

log = logging.getLogger(__name__)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError, OSError)


class StopRequested(Exception):
    """Raised by ``RunControl.poll`` when a stop command arrives; the Trainer ends cleanly with a checkpoint."""


class RunControl:
    """Metrics out, commands in, for one run id. ``store`` is a RunStore or a Redis URL."""

    def __init__(self, store: RunStore | str, run_id: str, *, poll_interval_s: float = 1.0):
        self.store = RunStore(store) if isinstance(store, str) else store
        self.run_id = run_id
        self.poll_interval_s = poll_interval_s
        self._buffer: collections.deque[tuple[str, int, dict, float]] = collections.deque()
        self._seq: dict[int, int] = {}
        self._record: dict[str, Any] = {}  # run-record fields waiting for Redis
        self._acks: list[tuple[str, dict]] = []  # acks waiting for Redis
        self._applied: set[str] = set()  # command ids applied (never applied twice if an ack was lost)
        self._down_since: float | None = None
        self.paused = False
        self.state = "running"

    def register(self, *, name: str, config: dict[str, Any]) -> None:
        """Create the run's record when this run id has none (a `tether train --run-id` started by hand or by a
        sweep), so the service lists it and serves it whole; an existing record is left as it is."""
        try:
            if self.store.get_run(self.run_id) is None:
                self.store.create_run(self.run_id, {"name": name, "config": config, "state": "submitted"})
        except REDIS_DOWN as e:
            log.warning("Redis unreachable (%s): run %s not registered; its metrics are buffered", e, self.run_id)

    # -- metrics and state -----------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def publish(self, step: int, metrics: dict[str, Any]) -> bool:
        """Queue one metrics row and send everything queued; False when Redis is unreachable (kept for later)."""
        k = self._seq.get(step, 0) + 1
        self._seq[step] = k
        self._buffer.append((f"{step}-{k}", step, dict(metrics), time.time()))
        self.set_record(iteration=step)
        return self.flush()

    def set_record(self, **fields: Any) -> None:
        self._record.update(fields)

    def set_state(self, state: str, **fields: Any) -> None:
        self.state = state
        self.set_record(state=state, **fields)
        self.flush()

    def flush(self) -> bool:
        try:
            while self._buffer:
                entry_id, step, m, t = self._buffer[0]
                if not self.store.add_metrics(self.run_id, entry_id, step, m, t):
                    log.debug("metrics %s already in the stream (a retried write)", entry_id)
                self._buffer.popleft()
            while self._acks:
                cid, ack = self._acks[0]
                self.store.ack_command(self.run_id, cid, **ack)
                self._acks.pop(0)
            if self._record:
                rec, self._record = self._record, {}
                try:
                    self.store.update_run(self.run_id, **rec)
                except REDIS_DOWN:
                    self._record = {**rec, **self._record}
                    raise
        except REDIS_DOWN as e:
            if self._down_since is None:
                self._down_since = time.time()
                log.warning("Redis unreachable (%s): training goes on, %d metric rows buffered", e, len(self._buffer))
            return False
        if self._down_since is not None:
            log.info("Redis reachable again after %.1fs: buffered metrics delivered", time.time() - self._down_since)
            self._down_since = None
        return True

    def drain(self, timeout_s: float = 300.0) -> bool:
        """At the end of a run: keep trying to deliver what is buffered for up to timeout_s seconds."""
        t0 = time.time()
        while not self.flush():
            if time.time() - t0 > timeout_s:
                log.error("Redis unreachable for %.0fs at the end of the run: %d metric rows not delivered (they are in metrics.jsonl)",
                          timeout_s, len(self._buffer))
                return False
            time.sleep(min(self.poll_interval_s, 1.0))
        return True

    # -- commands --------------------------------------------------------------------------------
    def poll(self, trainer) -> list[dict]:
        """Apply pending commands (blocking while paused). Returns the commands applied."""
        done: list[dict] = []
        while True:
            self.flush()
            try:
                cmds = self.store.take_commands(self.run_id, block_ms=int(self.poll_interval_s * 1000) if self.paused else None)
            except REDIS_DOWN as e:
                if not self.paused:
                    log.debug("no commands read (Redis unreachable: %s)", e)
                    return done
                time.sleep(self.poll_interval_s)  # paused and Redis away: wait for it, do not train
                continue
            for cmd in cmds:
                done.append(cmd)
                self._apply(trainer, cmd)  # may raise StopRequested (after its ack)
            if not self.paused:
                return done

    def _ack(self, cmd: dict, *, ok: bool, step: int, result: Any) -> None:
        self._applied.add(cmd["id"])
        self._acks.append((cmd["id"], {"ok": ok, "step": step, "result": result}))
        self.flush()

    def _apply(self, trainer, cmd: dict) -> None:
        step, kind = trainer.iteration, cmd["type"]
        if cmd["id"] in self._applied:  # its ack was lost on the way: acknowledge again, do not redo
            self.flush()
            return
        log.info("command %s (%s %s) at step %d", cmd["id"], kind, cmd["args"], step)
        try:
            if kind == "pause":
                self.paused = True
                self._ack(cmd, ok=True, step=step, result="paused")
                self.set_state("paused")
            elif kind == "resume":
                was = self.paused
                self.paused = False
                self._ack(cmd, ok=True, step=step, result="resumed" if was else "not paused")
                self.set_state("running")
            elif kind == "stop":
                self.paused = False
                self._ack(cmd, ok=True, step=step, result="stopping")
                raise StopRequested(f"stop command {cmd['id']} at step {step}")
            elif kind == "reset":
                if not trainer.cfg.elastic_reset.enabled:
                    raise ValueError("reset needs elastic_reset.enabled: true in the run's config (there is no EMA to reset to)")
                trainer.roles.reset_now()
                sync = trainer.roles.sync()
                self._ack(cmd, ok=True, step=step, result={"reset": True, **sync})
            elif kind == "set":
                self._ack(cmd, ok=True, step=step, result=self._set(trainer, cmd))
            else:
                raise ValueError(f"unknown command type {kind!r}")
        except StopRequested:
            raise
        except Exception as e:  # noqa: BLE001 - a bad command is refused and acknowledged, training goes on
            log.warning("command %s refused: %s", cmd["id"], e)
            self._ack(cmd, ok=False, step=step, result=str(e))

    def _set(self, trainer, cmd: dict) -> dict:
        upd = ParamUpdate.model_validate(cmd["args"])
        upd.check_against(trainer.cfg)
        step, changes = trainer.iteration, {}
        if upd.kl_coef is not None or upd.kl_target is not None:
            old = trainer.roles.set_kl(coef=upd.kl_coef, target=upd.kl_target)
            if upd.kl_coef is not None:
                changes["kl_coef"] = (old["kl_coef"], upd.kl_coef)
            if upd.kl_target is not None:
                changes["kl_target"] = (old["kl_target"], upd.kl_target)
        if upd.uwo_lambda is not None:
            changes["uwo_lambda"] = (trainer.roles.set_uwo_lambda(upd.uwo_lambda), upd.uwo_lambda)
        if upd.eval_every is not None:
            changes["eval_every"] = (trainer.cfg.train.eval_every, upd.eval_every)
            trainer.cfg.train.eval_every = upd.eval_every
        if upd.guard_action is not None:  # read at the next alarm (services/driver/guard_policy.py)
            changes["guard_action"] = (trainer.cfg.guard.action, upd.guard_action)
            trainer.cfg.guard.action = upd.guard_action
        for param, (old, new) in changes.items():
            try:
                self.store.log_change(self.run_id, param=param, old=old, new=new, step=step, command_id=cmd["id"])
            except REDIS_DOWN:
                log.warning("change of %s at step %d not logged: Redis unreachable", param, step)
        return {p: {"old": o, "new": n} for p, (o, n) in changes.items()}
