"""Schema truth: Schemathesis (every check, every phase including stateful) against a real server (uvicorn on a
socket, a real valkey-server) finds no 5xx, no undocumented status code or content type, and no response that
breaks the OpenAPI document. Budget: 20 examples per operation (about a minute here).
With --no-ray semantics (no job submission) runs stay queued, so the stateful phase can create runs and drive
every endpoint on them without starting training jobs."""
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import serve

from services.server.api import ServiceSettings, create_app

pytestmark = pytest.mark.slow
TOKEN = "schema-token"
ST = str(Path(sys.executable).with_name("st"))


@pytest.fixture
def server(tmp_path, tether_redis):
    with serve(create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=tether_redis.url, token=TOKEN, jobs=None))) as url:
        yield url


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    cmd = [ST, "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "--no-color", "run", f"{server}/openapi.json",
           "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", "20", "--workers", "1", "--seed", "20261201", "--request-timeout", "20"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-12000:]
    assert "Tested: 17" in text and "Stateful" in text and "generated" in text, text[-3000:]
    # the stateful phase follows the document's links from POST /runs (services/api_schema.add_run_links) and those it infers
    assert "API Links:" in text and "Scenarios:" in text, text[-3000:]
