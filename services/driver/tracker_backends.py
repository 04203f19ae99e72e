"""The tracker backends behind services.driver.trackers: MLflow (MlflowClient, no global MLflow state) and Weights & Biases,
each a thin adapter ``start(params, run name, resume id) -> record`` / ``log(step, metrics, time)`` / ``close(summary,
state)`` run in its feed's thread (services/driver/trackers.py). mlflow and wandb are imported only when an adapter is built.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any, Protocol

from learner.config import MLflowTrackingConfig, WandbTrackingConfig

log = logging.getLogger("services.driver.trackers")  # the trackers' one logger, as before the backends had a file of their own

INSTALL = "pip install 'tether[trackers]'"
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


def setup_error(message: str) -> Exception:
    """actors.errors.RuntimeSetupError (`tether train` and sweeps print it without a traceback; its module imports no Ray)."""
    from actors.errors import RuntimeSetupError

    return RuntimeSetupError(message)


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
