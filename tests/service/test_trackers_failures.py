"""Experiment trackers (services/driver/trackers.py, config ``tracking:``) given bad input: an enabled tracker whose package
is missing, bad fields, a tracking server that does not answer, one that goes away mid-run (the trackers read back:
test_trackers_backends.py). Nothing here reaches the network (MLflow on 127.0.0.1)."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from learner.config import ConfigError, load_config
from services.state.runlog import RunLog, read_metrics
from services.driver.trackers import require_packages
from tracker_helpers import _cfg, _log_rows, _open, _warnings, offline  # noqa: F401 - offline: the autouse fixture

ROOT = Path(__file__).resolve().parents[2]


# -- bad input -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_an_enabled_tracker_without_its_package_fails_before_training_with_the_install_command(tmp_path, monkeypatch, package):
    from actors.placement import RuntimeSetupError
    from services.driver.train import Trainer

    monkeypatch.setitem(sys.modules, package, None)  # `import mlflow` raises ImportError, as when it is not installed
    cfg = load_config("tiny", [f"data_dir={tmp_path / 'no-data'}", f"tracking.{package}.enabled=true"])
    expected = rf"tracking\.{package}\.enabled is true but the package '{package}'.*pip install 'tether\[trackers\]'"
    with pytest.raises(RuntimeSetupError, match=expected):
        require_packages(cfg.tracking)
    # before the task is resolved (its assets do not exist: AssetError otherwise); `tether train` prints RuntimeSetupErrors plainly
    with pytest.raises(RuntimeSetupError, match="pip install 'tether"):
        Trainer(cfg, tmp_path / "run", progress=False)
    require_packages(load_config("tiny").tracking)  # off: nothing is needed


def test_tether_train_with_a_missing_tracker_package_says_what_to_install(tmp_path):
    code = ("import sys\nsys.modules['wandb'] = None\nfrom services.cli import main\n"
            f"sys.argv = ['tether', 'train', 'tiny', '--set', 'data_dir={tmp_path / 'data'}', '--set', 'runs_dir={tmp_path / 'runs'}', "
            "'--set', 'runtime.mode=local', '--set', 'tracking.wandb.enabled=true']\nsys.exit(main())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == ("tether: tracking.wandb.enabled is true but the package 'wandb' (wandb) is not "
                                                   "installed: pip install 'tether[trackers]' (or set tracking.wandb.enabled: false)")
    assert "Traceback" not in out.stderr


def test_a_run_without_trackers_never_imports_mlflow_or_wandb_nor_ray(tmp_path):
    """Trackers off: neither package is imported; nor Ray by the trainer's module and the trackers' (local mode needs none)."""
    code = ("import sys\nfrom pathlib import Path\nfrom learner.config import TetherConfig\nimport services.driver.train\n"
            "from services.driver.trackers import Trackers\nfrom services.state.runlog import RunLog\n"
            f"t = Trackers.open(TetherConfig().tracking, Path({str(tmp_path)!r}), config={{}}, run_name='x')\n"
            f"log = RunLog(Path({str(tmp_path)!r}), tensorboard=False, trackers=t)\nlog.log(1, {{'a/b': 1.0}})\nlog.close()\nt.close()\n"
            "print(sorted(m for m in ('mlflow', 'wandb', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "trackers.json").exists() and len(read_metrics(tmp_path)) == 1


@pytest.mark.parametrize("item, field", [
    ("tracking.wandb.mode=cloud", "tracking.wandb.mode"),
    ("tracking.mlflow.tracking_uri=ftp://host/x", "tracking.mlflow.tracking_uri"),
    ("tracking.mlflow.tracking_uri=http://", "tracking.mlflow.tracking_uri"),
    ("tracking.mlflow.tracking_uri=''", "tracking.mlflow.tracking_uri"),
    ("tracking.mlflow.trackinguri=x", "tracking.mlflow.trackinguri"),
    ("tracking.mlflow.http_retries=11", "tracking.mlflow.http_retries"),
    ("tracking.wandb.project=team/project", "tracking.wandb.project"),
    ("tracking.mlflow.experiment=''", "tracking.mlflow.experiment"),
    ("tracking.flush_timeout_s=0", "tracking.flush_timeout_s"),
])
def test_bad_tracking_fields_name_the_field_and_what_is_accepted(item, field):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [item])
    assert f"  - {field}:" in str(e.value)
    if item.startswith("tracking.wandb.mode"):
        assert "'offline', 'online' or 'disabled'" in str(e.value)
    if "trackinguri" in item:
        assert "tracking_uri" in str(e.value)  # the accepted fields are listed


def test_accepted_tracking_uris():
    for uri in ("http://mlflow:5000", "https://mlflow.example.org/path", "file:/tmp/mlruns", "file:///tmp/mlruns", "databricks",
                "sqlite:///mlflow.db", "postgresql+psycopg2://u@h/db", "./mlruns"):
        assert load_config("tiny", [f"tracking.mlflow.tracking_uri={uri}"]).tracking.mlflow.tracking_uri == uri



def test_a_tracking_server_that_does_not_answer_leaves_the_run_going_with_one_warning(tmp_path, caplog):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers a request
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = _cfg(mlflow={"enabled": True, "tracking_uri": url, "http_timeout_s": 3, "http_retries": 0}, flush_timeout_s=30)
        run = tmp_path / "run"
        with caplog.at_level(logging.WARNING, logger="services.driver.trackers"):
            trackers = _open(cfg, run)
            _log_rows(run, trackers)  # returns at once: the tracker's thread is the one waiting on the server
            assert len(read_metrics(run)) == 3 and not _warnings(caplog)
            trackers.close(summary={"x": 1.0})
        w = _warnings(caplog)
        assert len(w) == 2, w
        assert w[0].startswith("mlflow tracker: starting the run failed") and "127.0.0.1" in w[0] and "the run goes on" in w[0]
        assert "3 of 3 rows were not delivered" in w[1]
        assert [r["reward/gold_mean"] for r in read_metrics(run)] == [0.5, 1.0, 1.5] and not (run / "trackers.json").exists()
    finally:
        silent.close()


class StandInMLflowServer(BaseHTTPRequestHandler):
    """The few MLflow REST endpoints MlflowClient calls (experiments get-by-name / create, runs create / log-batch / update /
    set-tag), recording every request. A stand-in: the real MLflow server is in the full `mlflow` package, not installed here
    (mlflow-skinny is the client only)."""

    calls: list = []

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self.calls.append((self.path, None))
        self._reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.calls.append((self.path, body))
        info = {"run_id": "r1", "experiment_id": "1", "status": body.get("status", "RUNNING"), "lifecycle_stage": "active", "start_time": 1}
        replies = {"experiments/create": {"experiment_id": "1"}, "runs/create": {"run": {"info": info, "data": {}}},
                   "runs/update": {"run_info": info}}
        self._reply(200, next((v for k, v in replies.items() if self.path.endswith(k)), {}))

    def log_message(self, *args):
        pass


def test_a_tracking_server_that_goes_away_mid_run_warns_once_and_the_run_keeps_every_row(tmp_path, caplog):
    StandInMLflowServer.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInMLflowServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    run = tmp_path / "run"
    cfg = _cfg(mlflow={"enabled": True, "tracking_uri": url, "http_timeout_s": 2, "http_retries": 0})
    runlog = None
    try:
        with caplog.at_level(logging.WARNING, logger="services.driver.trackers"):
            trackers = _open(cfg, run)
            runlog = RunLog(run, tensorboard=False, trackers=trackers)
            runlog.log(1, {"reward/gold_mean": 0.5, "kl/from_init": 0.1})
            runlog.log(2, {"reward/gold_mean": 1.0, "kl/from_init": float("nan")})
            deadline = time.time() + 30
            while time.time() < deadline and sum("metrics" in (b or {}) for _, b in StandInMLflowServer.calls) < 2:
                time.sleep(0.05)
            server.shutdown()
            server.server_close()
            for step in (3, 4, 5):
                runlog.log(step, {"reward/gold_mean": step / 2})
            runlog.close()
            trackers.close()
    finally:
        server.server_close()
    sent = [b for p, b in StandInMLflowServer.calls if p.endswith("runs/log-batch")]
    params = [b["params"] for b in sent if b.get("params")]
    metrics = [[(m["key"], m["value"], m["step"]) for m in b["metrics"]] for b in sent if b.get("metrics")]
    assert len(params) >= 2 and all(len(p) <= 100 for p in params)
    assert metrics == [[("reward/gold_mean", 0.5, 1), ("kl/from_init", 0.1, 1)], [("reward/gold_mean", 1.0, 2)]]  # slash names over REST
    assert trackers.feeds[0].tracker.run_id == "r1" and json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == "r1"
    w = _warnings(caplog)
    assert len(w) == 2, w
    assert w[0].startswith("mlflow tracker: logging iteration 3 failed") and "later failures of this tracker are counted" in w[0]
    assert "3 of 5 rows were not delivered" in w[1]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]
