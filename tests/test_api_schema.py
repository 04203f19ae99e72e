"""Schema truth: Schemathesis (every check, every phase including stateful) against a real server (uvicorn on a
socket, a real valkey-server) finds no 5xx, no undocumented status code or content type, and no response that
breaks the OpenAPI document. Budget: 20 examples per operation (about a minute here).
With --no-ray semantics (no job submission) runs stay queued, so the stateful phase can create runs and drive
every endpoint on them without starting training jobs."""
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from services.api import ServiceSettings, create_app

pytestmark = pytest.mark.slow
TOKEN = "schema-token"
ST = str(Path(sys.executable).with_name("st"))


@pytest.fixture
def server(tmp_path, tether_redis):
    app = create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=tether_redis.url, token=TOKEN, jobs=None))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        assert time.time() - t0 < 30, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)
    sock.close()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    cmd = [ST, "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "--no-color", "run", f"{server}/openapi.json",
           "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", "20", "--workers", "1", "--seed", "20261201", "--request-timeout", "20"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-12000:]
    assert "Tested: 15" in text and "Stateful" in text and "generated" in text, text[-3000:]
