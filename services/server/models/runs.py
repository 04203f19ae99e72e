"""The bodies of the runs' routes (POST /runs, GET /runs, GET /runs/{id}, GET /presets)."""
from __future__ import annotations

import contextvars
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.server.models.config import ServiceRunConfig
from services.server.presets import Presets, merge

RUN_EXAMPLE = {
    "config": {
        "name": "imdb-kl",
        "kl": {"mode": "adaptive", "coef": 0.05, "target": 6.0},
        "ppo": {"batch_size": 64, "minibatch_size": 16},
        "train": {"iterations": 50, "eval_every": 5},
        "runtime": {"mode": "ray", "engine": "vllm"},
    }
}


# The presets of the service handling this request (set per request by services/server/api.py; validation runs before the endpoint).
PRESETS: contextvars.ContextVar[Presets] = contextvars.ContextVar("tether_presets", default=Presets())
MAX_CONFIG_VALUES = 4_096  # keys and list items in a submitted config (a full config dump has about 300)


def integral_floats_as_ints(x: Any) -> Any:
    """JSON Schema's integer includes 10.0: strict validation would refuse it for an int field, so integral floats become ints
    first (a float field takes an int as well). Strings and booleans stay what they are, and strict validation refuses them."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, dict):
        return {k: integral_floats_as_ints(v) for k, v in x.items()}
    if isinstance(x, list):
        return [integral_floats_as_ints(v) for v in x]
    return x


def count_values(x: Any) -> int:
    if isinstance(x, dict):
        return len(x) + sum(count_values(v) for v in x.values())
    if isinstance(x, list):
        return len(x) + sum(count_values(v) for v in x)
    return 0


class RunCreate(BaseModel):
    """Start a run: a (partial) config, optionally on top of a preset (GET /presets); unspecified fields take
    TetherConfig's defaults. Types are strict: "0.1" is not a number, true is not 1."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [RUN_EXAMPLE, {"preset": "elastic-reset", "config": {"kl": {"coef": 0.02}}}]})
    preset: str | None = Field(None, max_length=64, description="A preset's name (GET /presets); `config` is merged into it key by key.")
    config: ServiceRunConfig = Field(default_factory=ServiceRunConfig, description="The run's configuration (the schema of configs/*.yaml), "
                                     "or the overrides of the preset.")

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset"), str) and data["preset"] in PRESETS.get().items:
            over = data.get("config", {})
            if isinstance(over, dict):  # anything else is refused by the config's own validation
                data = {**data, "config": merge(PRESETS.get().config(data["preset"]), over)}
        return data

    @field_validator("preset")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        names = PRESETS.get().names()
        if v is not None and v not in names:
            raise ValueError(f"no preset named {v[:64]!r}; this service has: {', '.join(names)} (GET /presets)")
        return v

    @field_validator("config", mode="wrap")
    @classmethod
    def _strict(cls, v: Any, handler):
        """Strict types everywhere in the config (pydantic's strict mode reaches every nested section only this way)."""
        if isinstance(v, dict):
            n = count_values(v)
            if n > MAX_CONFIG_VALUES:
                raise ValueError(f"the config has {n} keys and list items; a run's config has at most {MAX_CONFIG_VALUES} "
                                 "(a full dump has about 300): is something repeated?")
            return ServiceRunConfig.model_validate(integral_floats_as_ints(v), strict=True)
        return handler(v)


class Run(BaseModel):
    """A run: its Redis record combined with the Ray job's status (as last seen by the scheduler)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "r-1a2b3c4d", "name": "imdb-kl", "state": "running", "status": "running", "job_id": "tether-r-1a2b3c4d",
        "job_status": "RUNNING", "iteration": 12, "created": 1795500000.0, "updated": 1795500100.0,
        "run_dir": "/srv/tether/runs/r-1a2b3c4d/20261124-101500-imdb-kl/main",
    }]})
    id: str
    name: str
    state: str = Field(description="queued (waiting for admission), submitted (its Ray job was submitted), then what the trainer "
                       "reported: running, paused, stopped, finished, failed; or submit_failed, cancelled (stopped while queued).")
    status: str = Field(description="state combined with the Ray job status (a submitted run whose job is PENDING is 'pending', "
                        "RUNNING but not reporting yet 'starting').")
    queue_position: int | None = Field(None, description="1 = next to be admitted; None when not queued.")
    resources: dict[str, float] | None = Field(None, description="CPUs and GPUs the run declares (what admission counts).")
    job_id: str | None = None
    job_status: str | None = Field(None, description="Ray job status: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED (None when unknown).")
    iteration: int = 0
    created: float
    updated: float
    run_dir: str | None = None
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    guard: dict[str, Any] | None = Field(None, description="The gold-free guard's alarm, once raised: iteration, the rule, the action, "
                                         "the evaluation it judges best (pick_iteration, pick_checkpoint).")


class RunSummary(BaseModel):
    """A run as GET /runs lists it: no config (GET /runs/{id} has it)."""

    id: str
    name: str
    state: str
    status: str
    queue_position: int | None = None
    algorithm: str | None = Field(None, description="ppo, fdpg, quark, ... (from the config).")
    iteration: int = 0
    created: float
    updated: float
    job_status: str | None = None
    error: str | None = None
    guard: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None


class RunsPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"total": 1, "offset": 0, "limit": 50, "runs": [{
        "id": "r-1a2b3c4d", "name": "imdb-kl", "state": "running", "status": "running", "algorithm": "ppo", "iteration": 12,
        "created": 1795500000.0, "updated": 1795500100.0}]}]})
    total: int = Field(description="Runs matching the filter (all pages).")
    offset: int
    limit: int
    runs: list[RunSummary] = Field(description="Newest first.")


class Preset(BaseModel):
    name: str
    description: str
    config: dict[str, Any] = Field(description="The preset's config (the keys it sets; the rest are TetherConfig's defaults).")
