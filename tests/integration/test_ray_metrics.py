"""Actors' Ray metrics reach the Prometheus endpoint of a real local Ray node (in a subprocess, so this
test's Ray settings stay out of the pytest process)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import socket, time, urllib.request, ray
    from actors.metrics import role_metrics
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=128 * 2**20, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 500})

    @ray.remote(num_cpus=0)
    class A:
        def __init__(self):
            self.m = role_metrics("run-a", ["reward/gold_mean", "perf/rollout_tokens_per_s"])
        def go(self):
            self.m.record({"reward/gold_mean": 0.625, "perf/rollout_tokens_per_s": 321.0, "not/exported": 1.0})
            return True

    a = A.remote(); ray.get(a.go.remote())
    driver = role_metrics("run-a", ["guard/distinct2_ratio"])  # the trainer records the guard's signals from the driver
    driver.record({"guard/distinct2_ratio": 0.5})
    t0 = time.time()
    while time.time() - t0 < 60:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        if "tether_reward_gold_mean" in text and "tether_perf_rollout_tokens_per_s" in text and "tether_guard_distinct2_ratio" in text:
            break
        ray.get(a.go.remote()); driver.record({"guard/distinct2_ratio": 0.5}); time.sleep(1)
    print("\\n".join(l for l in text.splitlines() if "tether_" in l and not l.startswith("#")))
    ray.shutdown()
''')


def test_actor_metrics_exported_to_prometheus():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    lines = out.stdout.splitlines()
    gold = [l for l in lines if "tether_reward_gold_mean" in l]
    assert gold and 'run="run-a"' in gold[0] and gold[0].endswith("0.625"), out.stdout + out.stderr[-3000:]
    assert any("tether_perf_rollout_tokens_per_s" in l and l.endswith("321.0") for l in lines)
    assert not any("not_exported" in l for l in lines)
    assert any("tether_guard_distinct2_ratio" in l and 'run="run-a"' in l and l.endswith("0.5") for l in lines)
