"""The ``tracking:`` section: opt-in experiment trackers (MLflow, Weights & Biases) fed beside metrics.jsonl and
TensorBoard with the same slash-named metrics and the run's config (services/driver/trackers.py). Both are off by default;
neither package is imported by a run that leaves them off."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from learner.config.base import Strict

# Schemes MLflow's own client accepts: a tracking server, a local file store, Databricks, and the database stores of
# the full `mlflow` package (which needs SQLAlchemy; mlflow-skinny alone has none).
_MLFLOW_SCHEMES = ("http", "https", "file", "databricks", "databricks-uc", "sqlite", "postgresql", "mysql", "mssql")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# W&B project and entity names: no '/', '\\', '#', '?', '%' or ':' (W&B refuses them), at most 128 characters.
_WANDB_NAME = re.compile(r"^[^/\\#?%:\s][^/\\#?%:]{0,127}$")


def _text(v: str | None, field: str, limit: int) -> str | None:
    if v is not None and (not v.strip() or "\x00" in v or len(v) > limit or v != v.strip()):
        raise ValueError(f"{field} must be 1-{limit} characters, no NUL bytes and no surrounding spaces (or null), got {v[:80]!r}")
    return v


class MLflowTrackingConfig(Strict):
    """An MLflow run per tether run: every logged iteration as metrics (the slash names as they are), the config as params."""

    enabled: bool = Field(False, description="Log this run to MLflow (needs mlflow-skinny: pip install 'tether[trackers]').")
    tracking_uri: str | None = Field(
        None, description="An MLflow tracking server (http://host:5000, https://...), a local file store (file:/abs/path, or a plain "
        "path, relative to the working directory), databricks, or a database URI (sqlite:, postgresql:, ...; these need the full "
        "`mlflow` package). None = a file store inside the run folder: file:<run folder>/mlruns (MLflow 3 refuses file stores unless "
        "MLFLOW_ALLOW_FILE_STORE=true; tether sets it for a file: URI when it is unset).")
    experiment: str = Field("tether", description="MLflow experiment the run is logged under (created when missing).")
    run_name: str | None = Field(None, description="MLflow run name. None = the run's config name (a variant's is <name>-<variant>).")
    http_timeout_s: int = Field(10, ge=1, le=600, description="Seconds an MLflow request to a tracking server may take (sets "
                                "MLFLOW_HTTP_REQUEST_TIMEOUT in the run's process; MLflow's own default is 120).")
    http_retries: int = Field(2, ge=0, le=10, description="Retries of a failed MLflow request (sets MLFLOW_HTTP_REQUEST_MAX_RETRIES; "
                              "MLflow's own default is 7, about four minutes of back-off for a server that went away).")

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        _text(v, "tracking.mlflow.tracking_uri", 2048)
        if any(c.isspace() for c in v):
            raise ValueError(f"tracking.mlflow.tracking_uri must not contain spaces, got {v[:80]!r}")
        if v in ("databricks", "databricks-uc"):
            return v
        m = _SCHEME.match(v)
        scheme = m.group(1).lower().split("+")[0] if m else None
        if scheme is None:
            return v  # a plain path: a local file store
        if scheme not in _MLFLOW_SCHEMES:
            raise ValueError(f"tracking.mlflow.tracking_uri: scheme {scheme!r} is not one MLflow tracks to; accepted: "
                             f"http://, https://, file:, databricks, sqlite:, postgresql:, mysql:, mssql: or a plain path, got {v[:80]!r}")
        if scheme in ("http", "https") and not re.match(r"^https?://[^/\s]+", v, flags=re.I):
            raise ValueError(f"tracking.mlflow.tracking_uri: an http(s) tracking server needs a host (http://host:port), got {v[:80]!r}")
        return v

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, v: str) -> str:
        return _text(v, "tracking.mlflow.experiment", 500)

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        return _text(v, "tracking.mlflow.run_name", 250)


class WandbTrackingConfig(Strict):
    """A Weights & Biases run per tether run: every logged iteration against the `iteration` axis, the config as wandb.config."""

    enabled: bool = Field(False, description="Log this run to Weights & Biases (needs wandb: pip install 'tether[trackers]').")
    project: str = Field("tether", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (user or team). None = the logged-in user's default entity.")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: write the run to `dir` only (upload later with `wandb sync <dir>/wandb/offline-run-*`); "
        "online: stream to the W&B server (needs `wandb login` or WANDB_API_KEY); disabled: wandb's no-op run (nothing written).")
    dir: str | None = Field(None, description="Folder wandb writes its wandb/ folder into (relative to the working directory unless "
                            "absolute). None = the run folder.")
    run_name: str | None = Field(None, description="W&B run display name. None = the run's config name.")

    @field_validator("project", "entity")
    @classmethod
    def _name(cls, v: str | None, info) -> str | None:
        if v is not None and not _WANDB_NAME.match(v):
            raise ValueError(f"tracking.wandb.{info.field_name} must be 1-128 characters without / \\ # ? % : (W&B refuses them) and "
                             f"not start with a space, got {v[:80]!r}")
        return v

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str | None) -> str | None:
        return _text(v, "tracking.wandb.dir", 4096)

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        return _text(v, "tracking.wandb.run_name", 250)


class TrackingConfig(Strict):
    """Experiment trackers beside metrics.jsonl and TensorBoard. A tracker is fed from a thread of its own: a slow or
    unreachable tracker never holds up training, and one that fails is reported once and the run goes on."""

    mlflow: MLflowTrackingConfig = Field(default_factory=MLflowTrackingConfig, description="MLflow (off by default).")
    wandb: WandbTrackingConfig = Field(default_factory=WandbTrackingConfig, description="Weights & Biases (off by default).")
    flush_timeout_s: float = Field(60.0, gt=0, le=3600, description="At the end of a run, wait at most this long for the trackers to "
                                   "deliver what they still hold (metrics.jsonl has every row regardless).")
