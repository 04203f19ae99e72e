"""Kill a real `tether train` with SIGKILL mid-run, resume it, and compare with an uninterrupted run.

Every random draw of the loop is seeded by (seed, iteration) and the checkpoint holds the learner's
full state, so the resumed run must reproduce the uninterrupted run's metrics exactly.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.state.runlog import read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 12  # long enough that the kill lands mid-run on a fast, idle machine


def _cmd(tiny_cfg, runs_dir, *extra):
    return [sys.executable, "-m", "services.cli", "train", "tiny", "--set", f"data_dir={tiny_cfg.data_dir}", "--set", f"runs_dir={runs_dir}",
            "--set", "runtime.mode=local", "--set", "runtime.engine=transformers", "--set", "runtime.checkpoint_every=1",
            "--set", f"train.iterations={ITERATIONS}", "--set", "train.eval_every=2", "--set", "train.threads=1",
            "--set", "elastic_reset.enabled=true", "--set", "elastic_reset.every=2", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run_dir(runs_dir: Path) -> Path:
    found = [p for p in runs_dir.iterdir() if (p / "tether.yaml").exists()]
    assert len(found) == 1, found
    return found[0]


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_assets, tmp_path):
    cfg = tiny_assets[0]
    ref_runs, cut_runs = tmp_path / "ref", tmp_path / "cut"
    done = subprocess.run(_cmd(cfg, ref_runs), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_cmd(cfg, cut_runs), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        if cut_runs.exists() and any(cut_runs.iterdir()):
            root = _run_dir(cut_runs) / "main" / "checkpoints"
            # any complete checkpoint from iteration 3 on (older ones are pruned: keep_checkpoints=2)
            done_ck = sorted(p for p in root.glob("step-*") if (p / "driver.json").exists()) if root.exists() else []
            if done_ck and int(done_ck[-1].name.split("-")[1]) >= 3:
                ckpt = done_ck[-1]
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed mid-run"
    assert ckpt is not None, "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    run = _run_dir(cut_runs)
    status = json.loads((run / "main" / "status.json").read_text())
    assert status["state"] == "running"  # it really died mid-run, with no chance to clean up
    killed_at = max(r["step"] for r in read_metrics(run / "main"))
    assert 3 <= killed_at < ITERATIONS

    res = subprocess.run([sys.executable, "-m", "services.cli", "train", "--resume", str(run)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "main" / "status.json").read_text())["state"] == "finished"

    ref = read_metrics(_run_dir(ref_runs) / "main")
    got = read_metrics(run / "main")
    assert [r["step"] for r in got] == [r["step"] for r in ref]  # no duplicated or missing iterations
    for a, b in zip(ref, got):
        for key in ("reward/proxy_mean", "reward/gold_mean", "loss/policy", "loss/value", "kl/coef_next", "policy/version",
                    "elastic_reset/count", "eval/gold_mean", "eval/kl_from_init_k3"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert (run / "main" / "report.html").exists()


def test_resume_of_a_non_run_folder_is_refused(tmp_path):
    res = subprocess.run([sys.executable, "-m", "services.cli", "train", "--resume", str(tmp_path)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "is not a tether run folder" in res.stderr


def test_resume_of_a_run_that_died_before_its_first_checkpoint_logs_each_iteration_once(tiny_assets, tmp_path):
    """`tether train --resume` and a sweep cell share one orchestration (services.driver.train.run_or_resume): with no
    complete checkpoint the run starts afresh and the dead attempt's rows are cleared (they were appended to before)."""
    import shutil

    cfg = tiny_assets[0]
    done = subprocess.run(_cmd(cfg, tmp_path / "runs", "--set", "train.iterations=3", "--set", "runtime.checkpoint_every=0"),
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _run_dir(tmp_path / "runs")
    ref = read_metrics(run / "main")
    assert [r["step"] for r in ref] == [1, 2, 3, 3]  # one row per iteration, then the final evaluation
    shutil.rmtree(run / "main" / "checkpoints")  # as if it had died after logging, before its only (final) checkpoint
    (run / "main" / "status.json").write_text(json.dumps({"state": "running", "iteration": 3}))
    res = subprocess.run([sys.executable, "-m", "services.cli", "train", "--resume", str(run)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = read_metrics(run / "main")
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(ref, got):
        for key in ("reward/proxy_mean", "reward/gold_mean", "eval/gold_mean"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
