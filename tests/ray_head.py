"""A real local Ray head with the dashboard and token auth, for the tests that submit Ray jobs.

It runs on free ports and 127.0.0.1 only (not GCS's default 6379, Redis's port), and is stopped by killing
the process group this helper started (never `ray stop`, which would stop every Ray cluster on the machine).
"""
from __future__ import annotations

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

from services.state.jobs import RayJobs

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
