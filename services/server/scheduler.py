"""Admission control of service runs: a FIFO queue in Redis, a limit of concurrent runs, and the
reconciliation of every admitted run with its Ray job.

A run is created ``queued``. It is admitted (submitted as a Ray job, state ``submitted``) in order, when
both hold:

- fewer than ``max_runs`` runs are admitted and not over (when a limit is set), and
- the CPUs/GPUs the run declares (its placement group: ``runtime.<role>.num_cpus/num_gpus`` x actors;
  ``train.threads`` CPUs for a ``runtime.mode: local`` run), added to what the admitted runs declare,
  fit in the cluster's total (read from the Ray dashboard). Other work on the cluster is not counted.

Order is strict: a run that does not fit waits at the head of the queue, and no later run jumps it, so a
large run is not starved by small ones. A run that can never fit (it needs more than the cluster has) is
refused with 422 at ``POST /runs``.

Reconciliation: a Ray job that ended while its run still looks alive (a failure before the trainer
started, a crash, ``ray job stop``) marks the run ``failed`` (or ``stopped``), with Ray's message and the
last lines of the job's log in ``error``. The Ray job status is cached in the record (``job_status``), so
reading runs never waits on the dashboard.

Several service replicas may share one Redis: a tick runs under a Redis lock, so a run is submitted once.

Redis keys: ``tether:queue`` (sorted set: run id -> ticket), ``tether:queue:ticket`` (counter),
``tether:live`` (set: runs admitted whose Ray job has not been seen to end; a tick reads only these, so its
cost does not grow with the history of finished runs), ``tether:scheduler:lock`` (the lock).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from services.state.jobs import run_resources
from services.state.redis_store import LIVE, TERMINAL, RunStore

log = logging.getLogger(__name__)
QUEUE = "tether:queue"
TICKET = "tether:queue:ticket"
LOCK = "tether:scheduler:lock"
ACTIVE = ("submitted", "running", "paused")
JOB_DONE = ("SUCCEEDED", "FAILED", "STOPPED", "LOST")
EPS = 1e-9
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class NeverFits(ValueError):
    """The run needs more than the whole cluster has: it would wait forever."""


class Scheduler:
    """FIFO admission of queued runs. ``submit(record)`` submits one run's Ray job (raises on failure); with
    ``submit`` None this replica admits nothing (`tether serve --no-ray`: runs wait queued for a replica with Ray).
    ``jobs`` (services.state.jobs.RayJobs or None) answers job status, failure reasons and the cluster's size."""

    def __init__(self, store: RunStore, jobs, submit: Callable[[dict[str, Any]], None] | None, *, max_runs: int | None = None,
                 capacity_ttl_s: float = 10.0, resume: Callable[[dict[str, Any]], None] | None = None, job_retries: int = 1):
        if max_runs is not None and max_runs < 1:
            raise ValueError(f"max_runs must be >= 1 (or None for what the cluster's CPUs/GPUs allow), got {max_runs}")
        self.store, self.jobs, self.submit, self.max_runs = store, jobs, submit, max_runs
        # A job whose driver died (SIGKILL, OOM, a lost node) without the trainer reporting an end is submitted again
        # as `tether train --resume <its run folder>`, at most job_retries times: it continues from its checkpoint.
        self.resume, self.job_retries = resume, job_retries
        self.capacity_ttl_s = capacity_ttl_s
        self._capacity: tuple[float, dict[str, float] | None] = (0.0, None)
        self._lock = threading.Lock()

    # -- the queue -----------------------------------------------------------------------------------
    def enqueue(self, run_id: str) -> None:
        ticket = self.store.r.incr(TICKET)
        self.store.r.zadd(QUEUE, {run_id: ticket})

    def queued(self) -> list[str]:
        return list(self.store.r.zrange(QUEUE, 0, -1))

    def positions(self) -> dict[str, int]:
        return {rid: i + 1 for i, rid in enumerate(self.queued())}

    def cancel(self, run_id: str) -> bool:
        """Take a queued run off the queue (state 'cancelled'); False when it was not queued (already admitted)."""
        with self._lock:
            if not self.store.r.zrem(QUEUE, run_id):
                return False
            self.store.update_run(run_id, state="cancelled", error="cancelled while queued: it never started")
            return True

    # -- the cluster ---------------------------------------------------------------------------------
    def capacity(self) -> dict[str, float] | None:
        """The cluster's total CPU/GPU (cached for capacity_ttl_s); None when it cannot be read."""
        t, cap = self._capacity
        if cap is not None and time.time() - t < self.capacity_ttl_s:
            return cap
        if self.jobs is None:
            return None
        try:
            cap = self.jobs.cluster_resources()
        except Exception as e:  # noqa: BLE001 - unknown capacity: admission falls back to max_runs only
            log.warning("cannot read the Ray cluster's resources (%s): admitting by max_runs only", e)
            return None
        self._capacity = (time.time(), cap)
        return cap

    def check_fits(self, need: dict[str, float]) -> None:
        """Raise NeverFits when ``need`` exceeds the whole cluster (known capacity only)."""
        cap = self.capacity()
        if cap is None:
            return
        for k in ("CPU", "GPU"):
            if need.get(k, 0.0) > cap.get(k, 0.0) + EPS:
                raise NeverFits(f"the run declares {need.get('CPU', 0):g} CPUs and {need.get('GPU', 0):g} GPUs (runtime.<role>.num_cpus/num_gpus "
                                f"x actors) but the whole Ray cluster has {cap.get('CPU', 0):g} CPUs and {cap.get('GPU', 0):g} GPUs: it could "
                                "never start. Lower runtime.<role> resources or runtime.rollout_actors, or add nodes.")

    # -- one tick ------------------------------------------------------------------------------------
    def tick(self, *, reconcile: bool = True) -> list[str]:
        """Reconcile admitted runs with their jobs, then admit what fits, in order. Returns the admitted ids."""
        with self._lock:
            token = secrets.token_hex(8)
            if not self.store.r.set(LOCK, token, nx=True, px=30_000):
                return []  # another replica is ticking
            try:
                runs = [r for r in (self.live_record(i) for i in self.store.r.smembers(LIVE)) if r is not None]
                active = [r for r in runs if r.get("state") in ACTIVE]
                # Over by the trainer's word while its job is still exiting (writing the report, releasing its actors):
                # it holds its resources until the job ends, so it still counts.
                exiting = [r for r in runs if r.get("state") in TERMINAL and r.get("job_id") and r.get("job_status") in ("PENDING", "RUNNING")]
                if reconcile:
                    active = [r for r in active if not self._reconcile(r)]
                    exiting = [r for r in exiting if self._reconcile(r) is False]
                return self._admit(active, exiting)
            finally:
                self.store.r.eval(_UNLOCK, 1, LOCK, token)

    def live_record(self, run_id: str) -> dict[str, Any] | None:
        """The record of a live run, or None (and the run leaves the live set) when it no longer holds anything."""
        rec = self.store.get_run(run_id)
        if rec is not None:
            rec = {"id": run_id, **rec}
            if rec.get("state") in ACTIVE or rec.get("job_status") in ("PENDING", "RUNNING"):
                return rec
        self.store.r.srem(LIVE, run_id)
        return None

    def _reconcile(self, rec: dict[str, Any]) -> bool:
        """Refresh one admitted run's job status; True when its job is over (the run marked terminal if it was not)."""
        if self.jobs is None or not rec.get("job_id"):
            return False
        status = self.jobs.status(rec["job_id"])
        if status is None:
            return False
        if status != rec.get("job_status"):
            self.store.update_run(rec["id"], job_status=status)
        if status not in JOB_DONE:
            return False
        self.store.r.srem(LIVE, rec["id"])
        fresh = self.store.get_run(rec["id"]) or rec  # the trainer may have reported its end meanwhile
        if fresh.get("state") in TERMINAL:
            return True
        if status == "SUCCEEDED":
            self.store.update_run(rec["id"], state="finished", error="the Ray job succeeded but the trainer's final report did not reach Redis")
        elif status == "FAILED" and self._retry({**fresh, "id": rec["id"]}):
            return False
        else:
            state = "stopped" if status == "STOPPED" else "failed"
            reason = ("The cluster does not know this job (was the Ray head restarted?)" if status == "LOST"
                      else self.jobs.failure(rec["job_id"]))
            self.store.update_run(rec["id"], state=state, error=f"the Ray job {rec['job_id']} is {status}. {reason}".strip())
            log.warning("run %s: Ray job %s %s", rec["id"], rec["job_id"], status)
        return True

    def _retry(self, rec: dict[str, Any]) -> bool:
        """Submit a run whose driver died again, resuming its run folder; False when it cannot or may not be."""
        retries = int(rec.get("retries") or 0)
        if self.resume is None or retries >= self.job_retries or not rec.get("run_dir"):
            return False
        base = str(rec.get("job_base") or rec["job_id"])
        job_id, reason = f"{base}-retry{retries + 1}", self.jobs.failure(rec["job_id"])
        try:
            self.resume({**rec, "job_id": job_id})
        except Exception as e:  # noqa: BLE001 - no retry: the run fails with both reasons
            log.warning("run %s: resubmitting failed: %s", rec.get("id"), e)
            return False
        self.store.update_run(rec["id"], state="submitted", job_id=job_id, job_base=base, job_status="PENDING", retries=retries + 1,
                              retry_reason=f"the driver's job {rec['job_id']} failed ({reason.splitlines()[0][:300] if reason else 'no reason'}); "
                                    f"resumed from its checkpoint as job {job_id} (retry {retries + 1} of {self.job_retries})")
        self.store.r.sadd(LIVE, rec["id"])
        log.warning("run %s: Ray job %s failed; resuming it as %s", rec["id"], rec["job_id"], job_id)
        return True

    def _fits(self, need: dict[str, float], active: list[dict[str, Any]], holding: list[dict[str, Any]]) -> bool:
        if self.max_runs is not None and len(active) >= self.max_runs:
            return False
        cap = self.capacity()
        if cap is None:
            return True
        for k in ("CPU", "GPU"):
            used = sum(float((r.get("resources") or {}).get(k, 0.0)) for r in [*active, *holding])
            if used + need.get(k, 0.0) > cap.get(k, 0.0) + EPS:
                return False
        return True

    def _admit(self, active: list[dict[str, Any]], holding: list[dict[str, Any]]) -> list[str]:
        admitted: list[str] = []
        if self.submit is None:
            return admitted
        while True:
            head = self.store.r.zrange(QUEUE, 0, 0)
            if not head:
                return admitted
            rec = self.store.get_run(head[0])
            if rec is None or rec.get("state") != "queued":  # deleted or cancelled meanwhile
                self.store.r.zrem(QUEUE, head[0])
                continue
            if not self._fits(rec.get("resources") or {}, active, holding):
                return admitted
            if not self.store.r.zrem(QUEUE, rec["id"]):  # cancelled (or taken) between the read and now
                continue
            try:
                self.submit(rec)
            except Exception as e:  # noqa: BLE001 - the run keeps the reason; the next one gets its chance
                log.warning("run %s: Ray job submission failed: %s", rec["id"], e)
                self.store.update_run(rec["id"], state="submit_failed", error=f"Ray job submission failed: {e}")
                continue
            self.store.update_run(rec["id"], state="submitted", job_status="PENDING", admitted=time.time())
            self.store.r.sadd(LIVE, rec["id"])
            active.append({**rec, "state": "submitted"})
            admitted.append(rec["id"])

    # -- the background loop -------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event, *, poll_s: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - Redis or Ray away: try again at the next tick
                log.warning("scheduler tick failed: %s", e)
            stop.wait(poll_s)
