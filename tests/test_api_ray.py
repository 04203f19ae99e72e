"""`tether serve` submits a real Ray job (JobSubmissionClient) to a local Ray head with the dashboard.

The head runs with token auth (RAY_AUTH_MODE=token, the token in a file of this test), on free ports
and 127.0.0.1 only (not GCS's default 6379, Redis's port); it is stopped by killing the process group
this test started (never `ray stop`, which would stop every Ray cluster on the machine).
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api import ServiceSettings, create_app
from services.jobs import RayJobs

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head():
    tmp = Path(tempfile.mkdtemp(prefix="/tmp/trh"))  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    (tmp / "token").write_text(token)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "token"), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    gcs, dash, agent, agent_grpc, metrics, renv, client = _free_ports(7)
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(renv), "--ray-client-server-port", str(client),
           "--num-cpus", "2", "--object-store-memory", str(256 * 1024 * 1024), "--temp-dir", str(tmp / "ray"), "--include-dashboard", "true",
           "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        jobs = RayJobs(url, auth="token", token=token)
        t0 = time.time()
        while True:
            try:
                jobs.client().list_jobs()
                break
            except Exception:  # noqa: BLE001 - the dashboard is still starting
                jobs._client = None
                if time.time() - t0 > 120 or proc.poll() is not None:
                    raise RuntimeError(f"Ray head did not start:\n{(tmp / 'head.log').read_text()[-3000:]}")
                time.sleep(2)
        yield {"url": url, "token": token, "jobs": jobs, "tmp": tmp}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group only
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        time.sleep(1)
        left = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True).stdout.split()
        for pid in left:  # Ray daemons of this head that left the group (found by this test's unique temp dir)
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _client(tiny_cfg, tether_redis, jobs, token="tok"):
    svc = Path(tiny_cfg.data_dir).resolve().parent  # the service data dir holds the prepared tiny assets
    return TestClient(create_app(ServiceSettings(data_dir=svc, redis_url=tether_redis.url, token=token, jobs=jobs))), svc


def test_create_run_submits_a_ray_job_that_reports_to_redis(ray_head, tiny_assets, tether_redis):
    cfg = tiny_assets[0]
    client, svc = _client(cfg, tether_redis, ray_head["jobs"])
    body = cfg.model_dump(mode="json")
    body.update(data_dir=Path(cfg.data_dir).name, runs_dir="service-runs", name="tiny-job")
    body["runtime"].update(mode="local", engine="transformers")
    auth = {"Authorization": "Bearer tok"}
    r = client.post("/runs", json={"config": body}, headers=auth)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["job_id"] == f"tether-{run['id']}" and run["job_status"] in ("PENDING", "RUNNING")
    t0 = time.time()
    while time.time() - t0 < 400:
        run = client.get(f"/runs/{run['id']}", headers=auth).json()
        if run["status"] in ("finished", "failed", "stopped") and run["job_status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = ray_head["jobs"].logs(run["job_id"])
    assert run["status"] == "finished" and run["job_status"] == "SUCCEEDED", logs[-3000:]
    rows = client.get(f"/runs/{run['id']}/metrics", headers=auth).json()
    assert [r["step"] for r in rows] == [1, 2, 3, 3] and "eval/gold_mean" in rows[-1]
    assert Path(run["run_dir"]).resolve().is_relative_to(svc / "service-runs" / run["id"])
    assert client.get(f"/runs/{run['id']}/report", headers=auth).status_code == 200
    assert [c["step"] for c in client.get(f"/runs/{run['id']}/checkpoints", headers=auth).json()] == [3]


def test_wrong_ray_auth_mode_is_reported(ray_head, tiny_assets, tether_redis):
    client, _ = _client(tiny_assets[0], tether_redis, RayJobs(ray_head["url"], auth="disabled"))
    r = client.post("/runs", json={"config": {"name": "x"}}, headers={"Authorization": "Bearer tok"})
    assert r.status_code == 503 and "Ray job submission failed" in r.json()["detail"]
    (run,) = client.get("/runs", headers={"Authorization": "Bearer tok"}).json()
    assert run["state"] == "submit_failed" and run["error"]


def test_ray_job_submit_cli_runs_tether_train(ray_head, tiny_assets, tmp_path):
    """The README's `ray job submit -- tether train ...`, with the client told the auth mode."""
    cfg = tiny_assets[0]
    tether = str(Path(sys.executable).with_name("tether"))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_head["tmp"] / "token")}
    out = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head["url"], "--", tether, "train", "tiny", "--set", f"data_dir={cfg.data_dir}",
         "--set", f"runs_dir={tmp_path}", "--set", "runtime.mode=local", "--set", "runtime.engine=transformers", "--set", "train.threads=1"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout.lower() and "report:" in out.stdout
    (run,) = list(tmp_path.glob("*-tiny"))
    assert len((run / "main" / "metrics.jsonl").read_text().splitlines()) == cfg.train.iterations + 1
