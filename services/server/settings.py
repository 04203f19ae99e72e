"""What `tether serve` configures a service with (services/server/commands.py builds it; services/server/api.create_app takes it)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from actors.runtime_env import job_env_vars
from services.server.api_models import DEFAULT_LIMITS
from services.state.jobs import RayJobs


@dataclass
class ServiceSettings:
    data_dir: Path
    redis_url: str
    token: str
    jobs: RayJobs | None = None
    job_env: dict[str, str] = field(default_factory=job_env_vars)
    tether_bin: str = field(default_factory=lambda: str(Path(sys.executable).with_name("tether")))
    max_runs: int | None = None  # None: as many as the cluster's CPUs/GPUs hold (services/server/scheduler.py)
    job_retries: int = 1  # a run whose driver died is resumed from its checkpoint this many times (services/server/scheduler.py)
    limits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    max_body_bytes: int = 1024 * 1024  # a full config dump is about 6 KB
    scheduler_poll_s: float = 1.0
    redis_problem: Callable[[], str | None] | None = None  # why the embedded Redis is away: restarting, gave up (services/state/embedded_redis.py)
    presets_dir: Path | None = None  # `tether serve --presets DIR`: more presets (DIR/*.yaml) beside the built-in ones
    cors_origins: list[str] = field(default_factory=list)  # `--cors-origin`: browser origins (scheme://host:port) allowed to call the API
    mlflow_uri: str | None = None  # `--mlflow-uri`: the MLflow tracking server of runs with tracking.mlflow.enabled (else a store in the run folder)
    wandb_online: bool = False  # `--wandb-online`: runs may use tracking.wandb.mode online (with the service's W&B credentials)
