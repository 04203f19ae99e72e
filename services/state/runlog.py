"""Per-run metric log: one JSON line per iteration (metrics.jsonl) plus TensorBoard event files, and every row to the
run's opt-in experiment trackers (services/driver/trackers.py)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLog:
    """``trackers``: a services.driver.trackers.Trackers each row is also handed to (it returns at once); its owner closes it,
    with the run's summary, after this log is closed."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, trackers=None):
        self.run_dir = Path(run_dir)
        self.trackers = trackers
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._f = self.path.open("a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(k, v, step)
        if self.trackers is not None:
            self.trackers.log(step, clean)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_json(p: Path) -> dict:
    """A run or sweep folder's JSON file (summary, status, cells, job), or {} when it is missing or unreadable."""
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: everything before it is kept
            continue
    return out


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (``checkpoints/step-N`` with its driver.json) of a run folder, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "driver.json").exists())
    return done[-1] if done else None


def run_state(run_dir: Path) -> str | None:
    """The state in a run folder's status.json (finished, running, failed, stopped), or None."""
    try:
        return json.loads((Path(run_dir) / "status.json").read_text()).get("state")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def finite_number(x) -> bool:
    """A real, finite number (not a bool, None, NaN or inf): what a sample's score must be to be shown or used."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def sample_steps(run_dir: Path) -> list[int]:
    """The iterations whose evaluation wrote samples (``samples/step-NNNNNN.jsonl``), ascending."""
    out = []
    for p in (Path(run_dir) / "samples").glob("step-*.jsonl"):
        try:
            out.append(int(p.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(out)


def read_samples(run_dir: Path, step: int) -> list[dict]:
    """One evaluation's samples (prompt, response, proxy, proxy_members, gold); a line cut by a crash is skipped."""
    p = Path(run_dir) / "samples" / f"step-{step:06d}.jsonl"
    out = []
    for line in p.read_text().splitlines():
        try:
            x = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(x, dict) and "response" in x:
            out.append(x)
    return out


def evaluations(run_dir: Path, *, max_step: int | None = None) -> list[tuple[int, dict, list[dict]]]:
    """Every held-out evaluation of a run, in order: (iteration, its metrics row, its samples). Each samples file
    pairs with the metrics row of the same evaluation in log order; a run whose counts differ is refused."""
    rows = [r for r in read_metrics(run_dir) if r.get("eval/gold_mean") is not None]
    steps = sample_steps(run_dir)
    if len(steps) != len(rows):
        raise ValueError(f"{run_dir}: {len(steps)} samples files but {len(rows)} evaluations in metrics.jsonl")
    return [(st, r, read_samples(run_dir, st)) for st, r in zip(steps, rows) if max_step is None or st <= max_step]
