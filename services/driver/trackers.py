"""Opt-in experiment trackers beside metrics.jsonl and TensorBoard: MLflow and Weights & Biases (config ``tracking:``).

Each adapter is thin: ``start(params, run name, resume id) -> record`` / ``log(step, metrics, time)`` / ``close(summary,
state)``, with the slash-named metrics as they are (MLflow and W&B both accept '/'). `Trackers` feeds every enabled one
from a thread of its own, so a slow or unreachable tracker never holds up training; a failure is reported once (a tracker
that cannot start is dropped; after a failed row the next rows are still tried) and the run goes on (metrics.jsonl and
tb/ keep every row). mlflow and wandb are imported only when their tracker is enabled.

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
import posixpath
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from learner.config import MLflowTrackingConfig, TrackingConfig, WandbTrackingConfig

log = logging.getLogger(__name__)

INSTALL = "pip install 'tether[trackers]'"
STATE_FILE = "trackers.json"
MAX_PENDING = 10_000  # rows held per tracker while it is slow; beyond that new rows are dropped (and counted)
# MLflow's limits (mlflow.utils.validation): params per log_batch call, metrics per call, key and value lengths.
MLFLOW_PARAMS_PER_BATCH, MLFLOW_METRICS_PER_BATCH = 100, 1000
MLFLOW_KEY_LEN, MLFLOW_PARAM_LEN, MLFLOW_TAG_LEN = 250, 6000, 8000
_MLFLOW_BAD_CHARS = re.compile(r"[^/\w.\- :]")  # MLflow's names: alphanumerics, _ - . space : and '/'


class Tracker(Protocol):
    """An adapter: ``start`` gets the run's config (nested) and the record trackers.json kept for it (None: a new run) and
    returns the record to keep; ``log`` gets finite metrics and the time they were logged. All three run in the feed's thread."""

    name: str

    def start(self, params: dict[str, Any], run_name: str, *, resume: dict | None) -> dict: ...

    def log(self, step: int, metrics: dict[str, float], t: float) -> None: ...

    def close(self, *, summary: dict | None, state: str) -> None: ...


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


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys -> strings: {'kl': {'coef': 0.05}} -> {'kl.coef': '0.05'}; lists and empty mappings
    as JSON, None as 'null', strings as they are."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def run_params(config: dict) -> dict:
    """What a tracker records of a run's config (a full ``model_dump``): all but ``variants`` and ``tracking`` itself (a
    tracking URI may carry credentials)."""
    return {k: v for k, v in config.items() if k not in ("variants", "tracking")}


def setup_error(message: str) -> Exception:
    """actors.placement.RuntimeSetupError (`tether train` and sweeps print it without a traceback), imported only here: a
    local-mode run imports no Ray."""
    from actors.placement import RuntimeSetupError

    return RuntimeSetupError(message)


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


def _import(package: str, field: str):
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise setup_error(f"{field} is true but '{package}' cannot be imported ({e}): {INSTALL}") from None


# -- MLflow ------------------------------------------------------------------------------------------------------------
def mlflow_uri(section: MLflowTrackingConfig, run_dir: Path) -> str:
    """The tracking URI: the configured one, a plain path as a file: URI, or by default file:<run folder>/mlruns."""
    uri = section.tracking_uri
    if uri is None:
        return (Path(run_dir) / "mlruns").resolve().as_uri()
    if uri in ("databricks", "databricks-uc") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return uri
    return Path(uri).resolve().as_uri()


def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts: characters it refuses become '_' (tether's slash names pass unchanged)."""
    key = _MLFLOW_BAD_CHARS.sub("_", name)[:MLFLOW_KEY_LEN] or "_"
    if posixpath.normpath(key) != key or key.startswith(("/", "..")):  # MLflow refuses names that resolve to another path
        key = key.replace("/", "_")
    return key


class MLflowTracker:
    """One MLflow run (MlflowClient, no global MLflow state): params once at the start, metrics with their iteration as step."""

    name = "mlflow"

    def __init__(self, section: MLflowTrackingConfig, run_dir: Path):
        _import("mlflow", "tracking.mlflow.enabled")
        self.section, self.run_dir = section, Path(run_dir)
        self.uri = mlflow_uri(section, run_dir)
        self.client = None
        self.run_id: str | None = None

    def start(self, params: dict[str, Any], run_name: str, *, resume: dict | None) -> dict:
        # MLflow reads these at every request; bounded so that a server that went away fails a row in seconds, not minutes.
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(self.section.http_timeout_s)
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(self.section.http_retries)
        if self.uri.startswith("file:"):
            # MLflow 3 refuses its file store unless this is set (mlflow-skinny has no SQLAlchemy for sqlite:); an explicit
            # MLFLOW_ALLOW_FILE_STORE=false is left as it is.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = c = MlflowClient(tracking_uri=self.uri)
        if resume and resume.get("tracking_uri") == self.uri and resume.get("run_id"):
            try:
                c.update_run(resume["run_id"], status="RUNNING")
                self.run_id = resume["run_id"]
                return {**resume, "resumed": True}
            except Exception as e:  # deleted on the server, or the store moved: a new run
                log.warning("mlflow: cannot continue run %s (%s); starting a new MLflow run", resume["run_id"], e)
        exp = c.get_experiment_by_name(self.section.experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise RuntimeError(f"MLflow experiment {self.section.experiment!r} is deleted: restore it or set tracking.mlflow.experiment")
        eid = exp.experiment_id if exp is not None else self._create_experiment(c)
        run = c.create_run(eid, run_name=run_name, tags={"tether.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        items = [Param(mlflow_key(k), v[:MLFLOW_PARAM_LEN]) for k, v in flat_params(params).items()]
        for i in range(0, len(items), MLFLOW_PARAMS_PER_BATCH):
            c.log_batch(self.run_id, params=items[i : i + MLFLOW_PARAMS_PER_BATCH])
        return {"run_id": self.run_id, "experiment_id": eid, "tracking_uri": self.uri}

    def _create_experiment(self, c) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return c.create_experiment(self.section.experiment)
        except MlflowException:  # another run created it meanwhile
            exp = c.get_experiment_by_name(self.section.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def log(self, step: int, metrics: dict[str, float], t: float) -> None:
        from mlflow.entities import Metric

        ms = int(t * 1000)
        items = [Metric(mlflow_key(k), v, ms, step) for k, v in metrics.items()]
        for i in range(0, len(items), MLFLOW_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + MLFLOW_METRICS_PER_BATCH])

    def close(self, *, summary: dict | None, state: str) -> None:
        if summary:
            self.client.set_tag(self.run_id, "tether.summary", json.dumps(summary, default=str)[:MLFLOW_TAG_LEN])
        self.client.set_tag(self.run_id, "tether.state", state)
        self.client.set_terminated(self.run_id, status={"finished": "FINISHED", "stopped": "KILLED"}.get(state, "FAILED"))


# -- Weights & Biases --------------------------------------------------------------------------------------------------
class WandbTracker:
    """One W&B run: the config as wandb.config, each row against an `iteration` axis (define_metric), so the iterations a
    resumed run redoes are kept (W&B drops rows logged at a `step` below its last one)."""

    name = "wandb"
    STEP = "iteration"

    def __init__(self, section: WandbTrackingConfig, run_dir: Path):
        _import("wandb", "tracking.wandb.enabled")
        self.section = section
        self.dir = Path(section.dir).resolve() if section.dir else Path(run_dir).resolve()
        self.run = None

    def start(self, params: dict[str, Any], run_name: str, *, resume: dict | None) -> dict:
        import wandb

        s = self.section
        same = bool(resume and resume.get("run_id") and resume.get("project") == s.project and resume.get("entity") == s.entity)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=s.project, entity=s.entity, mode=s.mode, dir=str(self.dir), name=run_name, config=params,
            id=resume["run_id"] if same else None, resume="allow" if same else None, reinit="create_new",
            # console off: the driver's stdout and stderr stay the CLI's and Ray's (no wrapping from wandb's thread)
            settings=wandb.Settings(console="off"))
        self.run.define_metric(self.STEP)
        self.run.define_metric("*", step_metric=self.STEP)
        return {"run_id": self.run.id, "project": s.project, "entity": s.entity, "mode": s.mode, "dir": str(self.dir), "resumed": same}

    def log(self, step: int, metrics: dict[str, float], t: float) -> None:
        self.run.log({self.STEP: step, **metrics})

    def close(self, *, summary: dict | None, state: str) -> None:
        if summary:
            self.run.summary.update(json.loads(json.dumps(summary, default=str)))
        self.run.summary["tether/state"] = state
        self.run.finish(exit_code=0 if state in ("finished", "stopped") else 1)


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
