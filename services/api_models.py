"""Request and response bodies of the REST API (services/api.py), with examples for the OpenAPI schema.

The run config body is the one schema, ``learner.config.TetherConfig``, narrowed for a service: paths
stay inside the service's data directory and model names cannot point at local folders.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from learner.config import TetherConfig
from services.control import ParamUpdate  # noqa: F401 - re-exported: the PATCH /runs/{id}/params body

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _inside(value: str, field: str) -> str:
    """A path relative to the service's data directory that cannot leave it."""
    if value.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{field} must be a relative path inside the service's data directory, got {value!r}")
    if any(part == ".." for part in re.split(r"[\\/]", value)):
        raise ValueError(f"{field} must not contain '..' (it must stay inside the service's data directory), got {value!r}")
    return value


class ServiceRunConfig(TetherConfig):
    """A run's config as the service accepts it: TetherConfig, with paths kept inside the data directory,
    model names restricted to hub names (no local folders), and no variants (submit each as its own run)."""

    @field_validator("data_dir", "runs_dir")
    @classmethod
    def _paths(cls, v: str, info) -> str:
        return _inside(v, info.field_name)

    @field_validator("variants")
    @classmethod
    def _no_variants(cls, v: dict) -> dict:
        if v:
            raise ValueError("a service run is one config: submit each variant as its own run")
        return v

    @field_validator("policy", "gold", "proxy")
    @classmethod
    def _names(cls, v, info):
        name = getattr(v, "name_or_path", None)
        if name is not None and (not _HUB_NAME.match(name) or ".." in name):
            raise ValueError(f"{info.field_name}.name_or_path must be a model hub name like 'org/model' (local paths are refused), got {name!r}")
        return v


RUN_EXAMPLE = {
    "config": {
        "name": "imdb-kl",
        "kl": {"mode": "adaptive", "coef": 0.05, "target": 6.0},
        "ppo": {"batch_size": 64, "minibatch_size": 16},
        "train": {"iterations": 50, "eval_every": 5},
        "runtime": {"mode": "ray", "engine": "vllm"},
    }
}


class RunCreate(BaseModel):
    """Start a run: a (partial) config; unspecified fields take TetherConfig's defaults."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [RUN_EXAMPLE]})
    config: ServiceRunConfig = Field(description="The run's configuration (the schema of configs/*.yaml).")


class Run(BaseModel):
    """A run: its Redis record combined with the Ray job's status."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "r-1a2b3c4d", "name": "imdb-kl", "state": "running", "status": "running", "job_id": "tether-r-1a2b3c4d",
        "job_status": "RUNNING", "iteration": 12, "created": 1795500000.0, "updated": 1795500100.0,
        "run_dir": "/srv/tether/runs/r-1a2b3c4d/20261124-101500-imdb-kl/main",
    }]})
    id: str
    name: str
    state: str = Field(description="What the trainer reported: created, running, paused, stopped, finished, failed, submit_failed.")
    status: str = Field(description="state combined with the Ray job status (e.g. a job that died while 'running' is 'failed').")
    job_id: str | None = None
    job_status: str | None = Field(None, description="Ray job status: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED (None when unknown).")
    iteration: int = 0
    created: float
    updated: float
    run_dir: str | None = None
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None


class CommandAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"run_id": "r-1a2b3c4d", "command_id": "1795500100123-0", "type": "pause", "args": {}}]})
    run_id: str
    command_id: str = Field(description="Redis stream id of the command; its acknowledgement appears in GET /runs/{id}/commands.")
    type: Literal["pause", "resume", "stop", "reset", "set"]
    args: dict[str, Any] = Field(default_factory=dict)


class CommandInfo(BaseModel):
    id: str
    type: str
    args: dict[str, Any]
    created: float
    ack: dict[str, Any] | None = Field(None, description="{ok, step, result, time} once the trainer applied (or refused) it.")


class ParamChange(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "12-1", "param": "kl_coef", "old": 0.05, "new": 0.02, "step": 12,
                                                               "time": 1795500100.5, "command": "1795500100123-0"}]})
    id: str
    param: str
    old: Any
    new: Any
    step: int
    time: float
    command: str


class MetricRow(BaseModel):
    """One logged iteration: step, time and slash-named metrics (reward/gold_mean, kl/from_init, ...)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"id": "12-1", "step": 12, "time": 1795500100.0,
                                                                               "reward/proxy_mean": 0.8, "reward/gold_mean": 0.4, "kl/from_init": 3.1}]})
    id: str
    step: int
    time: float


class Checkpoint(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "step-000016", "step": 16, "path": "/srv/tether/runs/r-1/x/main/checkpoints/step-000016", "time": 1795500100.0}]})
    name: str
    step: int
    path: str
    time: float | None = None


class Health(BaseModel):
    ok: bool
    redis: bool
