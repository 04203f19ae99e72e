"""Bad runtime input fails fast with a message saying what to change (never a hang)."""
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from actors.placement import RuntimeSetupError, bundles, connect, place
from learner.config import RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_unreachable_ray_address_fails_fast():
    with pytest.raises(RuntimeSetupError, match=r"no Ray cluster answers at '127.0.0.1:1'.*RAY_ADDRESS"):
        connect(RuntimeConfig(ray_address="127.0.0.1:1", connect_timeout_s=2))
    with pytest.raises(RuntimeSetupError, match="is not host:port"):
        connect(RuntimeConfig(ray_address="nonsense"))


def test_bundles_follow_the_config():
    rt = RuntimeConfig(rollout_actors=3, rollout={"num_cpus": 0.5, "num_gpus": 1})
    bs, idx = bundles(rt)
    assert idx["rollout"] == [0, 1, 2] and idx["learner"] == [5]
    assert bs[0] == {"CPU": 0.5, "GPU": 1} and len(bs) == 6


@pytest.fixture
def small_ray():
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


def test_unplaceable_resources_name_the_fix(small_ray):
    rt = RuntimeConfig(rollout_actors=2, rollout={"num_cpus": 1.0})
    with pytest.raises(RuntimeSetupError) as e:
        place(rt)
    msg = str(e.value)
    assert "need 3.5 CPUs" in msg and "has 1 CPUs" in msg and "runtime.rollout_actors" in msg
    gpu = RuntimeConfig(learner={"num_cpus": 0.1, "num_gpus": 1}, rollout={"num_cpus": 0.1}, reward={"num_cpus": 0.1}, gold={"num_cpus": 0.1})
    with pytest.raises(RuntimeSetupError, match="1 GPUs in all"):
        place(gpu)
    ok = place(RuntimeConfig(rollout={"num_cpus": 0.25}, reward={"num_cpus": 0.25}, gold={"num_cpus": 0.25}, learner={"num_cpus": 0.25}))
    ok.remove()


def test_cli_reports_bad_preset_and_bad_address(tmp_path):
    env_run = lambda *a: subprocess.run([sys.executable, "-m", "services.cli", *a], cwd=ROOT, capture_output=True, text=True, timeout=120)
    r = env_run("train", "no-such-preset")
    assert r.returncode != 0 and "neither a file nor a preset" in r.stderr and "tiny" in r.stderr
    r = env_run("train", "tiny", "--set", "ppo.lr=-1")
    assert r.returncode != 0 and "ppo.lr" in r.stderr and "greater than 0" in r.stderr
