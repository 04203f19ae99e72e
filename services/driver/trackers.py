"""Opt-in experiment trackers beside metrics.jsonl and TensorBoard: MLflow and Weights & Biases (config ``tracking:``).

Each adapter is thin: ``start(params, run name, resume id) -> record`` / ``log(step, metrics, time)`` / ``close(summary,
state)``, with the slash-named metrics as they are (MLflow and W&B both accept '/'). `Trackers` feeds every enabled one
from a thread of its own, so a slow or unreachable tracker never holds up training; a failure is reported once (a tracker
that cannot start is dropped; after a failed row the next rows are still tried) and the run goes on (metrics.jsonl and
tb/ keep every row). mlflow and wandb are imported only when their tracker is enabled. The adapters themselves are in
services/driver/tracker_backends.py (their names are importable from here too).

Each tracker's run id is kept in ``<run folder>/trackers.json``, so a resumed run (`tether train --resume`) continues
the same MLflow run and W&B run id. The iterations redone after a resume (those after the checkpoint) are logged again:
the trackers' histories then hold them twice, with the same values (every draw is seeded by (seed, iteration)) except
the timings.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from learner.config import MLflowTrackingConfig, TrackingConfig, WandbTrackingConfig  # noqa: F401 - the adapters' sections, as before
from services.driver.tracker_backends import (  # noqa: F401 - every name of the adapters, importable from here as before
    _MLFLOW_BAD_CHARS,
    INSTALL,
    MLFLOW_KEY_LEN,
    MLFLOW_METRICS_PER_BATCH,
    MLFLOW_PARAM_LEN,
    MLFLOW_PARAMS_PER_BATCH,
    MLFLOW_TAG_LEN,
    MLflowTracker,
    Tracker,
    WandbTracker,
    _import,
    flat_params,
    mlflow_key,
    mlflow_uri,
    setup_error,
)

log = logging.getLogger(__name__)

STATE_FILE = "trackers.json"
MAX_PENDING = 10_000  # rows held per tracker while it is slow; beyond that new rows are dropped (and counted)


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are real, finite numbers, as floats (None, NaN and inf are left out, as RunLog writes them null)."""
    out = {}
    for k, v in metrics.items():
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x) and not isinstance(v, bool):
            out[k] = x
    return out


def run_params(config: dict) -> dict:
    """What a tracker records of a run's config (a full ``model_dump``): all but ``variants`` and ``tracking`` itself (a
    tracking URI may carry credentials)."""
    return {k: v for k, v in config.items() if k not in ("variants", "tracking")}


def require_packages(section: TrackingConfig) -> None:
    """RuntimeSetupError naming the package and the install command when an enabled tracker's package is missing (nothing
    is imported)."""
    for name, package, dist in (("mlflow", "mlflow", "mlflow-skinny"), ("wandb", "wandb", "wandb")):
        if getattr(section, name).enabled and not _installed(package):
            raise setup_error(f"tracking.{name}.enabled is true but the package '{package}' ({dist}) is not installed: {INSTALL} "
                              f"(or set tracking.{name}.enabled: false)")


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # sys.modules[package] is None or a broken module
        return False


TRACKERS: dict[str, type] = {"mlflow": MLflowTracker, "wandb": WandbTracker}  # the one registry: config section name -> adapter


# -- feeding them ------------------------------------------------------------------------------------------------------
class _Feed:
    """One tracker behind a queue and a daemon thread: start, rows and close run there in order. The first failure is a
    warning; after a failed start the tracker is dropped, after a failed row the next rows are still tried (a server
    back from an outage gets them) and the count of lost rows is reported at the end."""

    def __init__(self, tracker, *, on_started):
        self.tracker, self.on_started = tracker, on_started
        self.q: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        self.started = False
        self.dead = False
        self.warned = False
        self.lost = 0  # rows not delivered: failed, dropped while the queue was full, or after a failed start
        self.rows = 0
        self.thread = threading.Thread(target=self._run, name=f"tether-tracker-{tracker.name}", daemon=True)

    def put(self, item: tuple) -> None:
        if item[0] == "log":
            self.rows += 1
        try:
            self.q.put_nowait(item)
        except queue.Full:
            self.lost += 1

    def _warn(self, what: str, e: BaseException) -> None:
        if not self.warned:
            self.warned = True
            log.warning("%s tracker: %s failed (%s: %s); the run goes on, metrics.jsonl and tb/ keep every metric "
                        "(later failures of this tracker are counted, not shown)", self.tracker.name, what, type(e).__name__, e)

    def _run(self) -> None:
        while True:
            kind, *args = self.q.get()
            if kind == "close":
                if self.started:
                    try:
                        self.tracker.close(summary=args[0], state=args[1])
                    except Exception as e:
                        self._warn("closing the run", e)
                return
            if self.dead:
                self.lost += kind == "log"
                continue
            try:
                if kind == "start":
                    self.on_started(self.tracker.name, self.tracker.start(args[0], args[1], resume=args[2]))
                    self.started = True
                else:
                    self.tracker.log(*args)
            except Exception as e:
                self._warn("starting the run" if kind == "start" else f"logging iteration {args[0]}", e)
                if kind == "start":
                    self.dead = True
                else:
                    self.lost += 1


class Trackers:
    """The run's enabled trackers (none: every call is a no-op and neither package is imported)."""

    def __init__(self, feeds: list[_Feed], run_dir: Path, *, flush_timeout_s: float):
        self.feeds, self.run_dir, self.flush_timeout_s = feeds, Path(run_dir), flush_timeout_s
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, section: TrackingConfig, run_dir: Path, *, config: dict, run_name: str, resume: bool = False) -> "Trackers":
        """Start every enabled tracker (in its thread) with the run's config (a full ``model_dump``); ``resume``: continue the
        tracker runs recorded in trackers.json. RuntimeSetupError, before anything starts, when an enabled tracker's package is missing."""
        require_packages(section)
        run_dir = Path(run_dir)
        saved = _read_state(run_dir) if resume else {}
        if not resume:  # a fresh start: new tracker runs (the ids of an attempt that died before its first checkpoint go)
            (run_dir / STATE_FILE).unlink(missing_ok=True)
        out = cls([], run_dir, flush_timeout_s=section.flush_timeout_s)
        params = run_params(config)
        for name, adapter in TRACKERS.items():
            sub = getattr(section, name)
            if not sub.enabled:
                continue
            feed = _Feed(adapter(sub, run_dir), on_started=out._record)
            feed.put(("start", params, sub.run_name or run_name, saved.get(name)))
            feed.thread.start()
            out.feeds.append(feed)
        return out

    def _record(self, name: str, info: dict) -> None:
        """trackers.json: each tracker's run id and where it lives (written from the trackers' threads, one at a time)."""
        with self._lock:
            state = _read_state(self.run_dir)
            state[name] = {k: v for k, v in info.items() if k != "resumed"}
            tmp = self.run_dir / (STATE_FILE + ".tmp")
            tmp.write_text(json.dumps(state, indent=2))
            os.replace(tmp, self.run_dir / STATE_FILE)
            log.info("%s tracker: %s run %s", name, "continuing" if info.get("resumed") else "logging to", info.get("run_id"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Queue one row for every tracker (returns at once); non-finite values are left out."""
        if not self.feeds or self._closed:
            return
        row = finite_metrics(metrics)
        t = time.time()
        for f in self.feeds:
            f.put(("log", step, row, t))

    def close(self, *, summary: dict | None = None, state: str = "finished") -> None:
        """Hand each tracker the run's summary and end its run, waiting at most tracking.flush_timeout_s in all."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.flush_timeout_s
        for f in self.feeds:
            try:
                f.q.put(("close", summary, state), timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
        for f in self.feeds:
            f.thread.join(max(0.0, deadline - time.monotonic()))
            name = f.tracker.name
            if f.thread.is_alive():
                log.warning("%s tracker: not done after tracking.flush_timeout_s=%.0f s; leaving it (%d rows still queued); metrics.jsonl "
                            "has every row", name, self.flush_timeout_s, f.q.qsize())
            elif f.lost:
                log.warning("%s tracker: %d of %d rows were not delivered; metrics.jsonl has every row", name, f.lost, f.rows)


def _read_state(run_dir: Path) -> dict:
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}
