"""A run's checkpoints (run_dir/checkpoints/step-NNNNNN): saving one whole or not at all, loading the latest on resume
(or after a lost learner), trimming the metrics logged after it, and exporting a checkpoint's policy.

Every random draw of the loop is seeded by (train.seed, iteration): prompts, sampling, minibatch order. So the data
position and the RNG state are the iteration number itself (driver.json); the learner's own torch RNG state travels
in learner.pt.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from services.state.runlog import read_metrics

log = logging.getLogger("services.driver.train")  # the driver's one logger name, as when this was all train.py


def checkpoint_dir(ckpt_root: Path, iteration: int) -> Path:
    return ckpt_root / f"step-{iteration:06d}"


def save(ckpt_root: Path, iteration: int, roles, *, keep: int) -> Path:
    """The roles' state at ``iteration`` as ckpt_root/step-NNNNNN (SIGKILL-safe); only the ``keep`` newest are kept."""
    final = checkpoint_dir(ckpt_root, iteration)
    tmp = ckpt_root / f".tmp-step-{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    roles.save(str(tmp / "learner.pt"))
    driver = {"iteration": iteration, "data_position": iteration, "time": time.time()}
    (tmp / "driver.json").write_text(json.dumps(driver))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a checkpoint exists whole or not at all (SIGKILL-safe)
    for old in sorted(p for p in ckpt_root.iterdir() if p.name.startswith("step-"))[: -keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(checkpoint: Path, roles) -> int:
    """Load a checkpoint into the roles (weights, optimiser and RNG state); returns its iteration (the data position)."""
    driver = json.loads((checkpoint / "driver.json").read_text())
    roles.load(str(checkpoint / "learner.pt"))
    return driver["iteration"]


def keep_metrics_until(run_dir: Path, iteration: int) -> None:
    """Metrics logged after the checkpoint belong to iterations about to be redone: metrics.jsonl keeps steps <= iteration."""
    rows = read_metrics(run_dir)
    kept = [r for r in rows if r["step"] <= iteration]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def export(policy: Path, checkpoint: Path, out: Path, *, run_name: str) -> Path:
    """A checkpoint's policy as a Hugging Face folder (learner/models/export.py): from_pretrained and vLLM load it."""
    from learner.models.export import export_policy

    path = export_policy(policy, checkpoint / "learner.pt", out, note={"run": run_name})
    log.info("policy exported to %s", path)
    return path


def export_final(policy: Path, checkpoint: Path, run_dir: Path, guard_alarm: dict | None, *, run_name: str) -> None:
    """train.export_policy: the final checkpoint's policy to run_dir/policy and, after a guard alarm, the guard's pick
    to run_dir/policy-guard-pick."""
    export(policy, checkpoint, run_dir / "policy", run_name=run_name)
    pick = (guard_alarm or {}).get("pick_checkpoint")
    if pick and Path(pick, "learner.pt").exists():
        export(policy, Path(pick), run_dir / "policy-guard-pick", run_name=run_name)
