"""What the tracker tests share (tests/service/test_trackers_backends.py, tests/service/test_trackers_failures.py): W&B offline
and the MLflow variables undone after each test (an autouse fixture: import it into the test module), a config with a
``tracking:`` section, the trackers opened on a run folder, three rows logged through a RunLog, the trackers' warnings."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from learner.config import TetherConfig, validate_dict, without_other_algorithms
from services.state.runlog import RunLog
from services.driver.trackers import Trackers

MLFLOW_ENV = ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """W&B offline and silent, its folders under tmp_path; the MLflow variables the tracker sets are undone after each test."""
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb-default",
                 "WANDB_CONFIG_DIR": tmp_path / "wandb-config", "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                 "WANDB_DATA_DIR": tmp_path / "wandb-data"}.items():
        monkeypatch.setenv(k, str(v))
    for k in MLFLOW_ENV:
        monkeypatch.setenv(k, "unset")  # recorded as absent: the tracker's own settings are removed again at teardown
        monkeypatch.delenv(k)


def _cfg(**tracking) -> TetherConfig:
    return validate_dict({"tracking": tracking}, source="test")


def _open(cfg: TetherConfig, run_dir: Path, *, resume: bool = False) -> Trackers:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trackers.open(cfg.tracking, run_dir, config=without_other_algorithms(cfg.model_dump(mode="json"), cfg.algorithm),
                         run_name=cfg.name, resume=resume)


ROWS = [{"reward/gold_mean": 0.5, "kl/from_init": 0.1, "loss/policy": float("nan")},
        {"reward/gold_mean": 1.0, "kl/from_init": float("inf"), "loss/policy": -0.2},
        {"reward/gold_mean": 1.5, "kl/from_init": 0.3, "loss/policy": None}]


def _log_rows(run_dir: Path, trackers: Trackers) -> None:
    runlog = RunLog(run_dir, tensorboard=False, trackers=trackers)
    for step, row in enumerate(ROWS, start=1):
        runlog.log(step, row)
    runlog.close()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "services.driver.trackers"]
