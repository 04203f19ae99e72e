"""`tether reproduce`: every paper's headline claim measured on the default task, with bootstrap confidence intervals.

The reproduction is a fixed list of stages, each a sweep spec (configs/sweeps/overopt.yaml, configs/reproduce/*.yaml)
or the best-of-n experiment; every stage resumes (finished cells are skipped, a cell with a checkpoint resumes), so
an interrupted reproduction continues where it stopped. Assets each stage needs are built first (`tether prepare`).
Then ``write_claims`` reads the run folders (each evaluation's samples, metrics) and writes ``claims.md``,
``claims.json`` and plots: one row per claim with its effect, a 95% interval from a two-level bootstrap over seeds
and eval prompts (learner.analysis.claims), and a verdict against the claim's stated threshold.

The package's modules, by job: ``stages`` (the stages, running them, the plan), ``runs`` (reading run folders),
``claims`` (the claim model, its statistics), ``catalogue`` (which claims each stage's runs measure), ``render``
(claims.md, the table, plots, the README section). This module runs the whole: ``run_reproduction``, ``write_claims``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from services.experiments.reproduce.catalogue import bon_claims, sweep_claims
from services.experiments.reproduce.claims import MIN_SEEDS, Claim, _Diff, _Gap, _LossAtKL, _need
from services.experiments.reproduce.render import (README_END, README_START, claims_markdown, claims_table, draw_plots, fmt, plan_table,
                                                   update_readme)
from services.experiments.reproduce.runs import UNREADABLE, load_runs, ppo_ensemble_arms, read_run
from services.experiments.reproduce.stages import (BON_ARGS, CELL_START_S, ROOT, SECONDS_PER_ITERATION, SPEC_DIR, STAGE_NAMES, STAGES,
                                                   Stage, plan, run_stage, stage_dirs, stage_minutes)


def run_reproduction(out_dir: Path, *, only: list[str] | None = None, progress: bool = True, n_boot: int = 2000,
                     say: Callable[[str], None] = print) -> dict:
    """Every stage (or those in ``only``) in order, resumable, then the claims report in ``out_dir``."""
    from learner.config import load_config

    base = load_config("default")
    runs_dir = Path(base.runs_dir)
    stages = [s for s in STAGES if only is None or s.name in only]
    from tqdm.auto import tqdm

    for s in tqdm(stages, desc="reproduce", unit="stage", disable=not progress):
        say(f"=== stage {s.name}: {s.what}")
        t0 = time.perf_counter()
        status = run_stage(s, runs_dir, base, progress=progress, say=say)
        say(f"=== stage {s.name}: {status} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return write_claims(out_dir, runs_dir=runs_dir, n_boot=n_boot)


def write_claims(out_dir: Path, *, runs_dir: Path | None = None, n_boot: int = 2000, seed: int = 0, plots: bool = True) -> dict:
    """Measure every claim on what has run; write claims.json, claims.md and plots into ``out_dir``."""
    from learner.config import load_config

    runs_dir = Path(runs_dir or load_config("default").runs_dir)
    dirs = stage_dirs(runs_dir)
    UNREADABLE.clear()
    claims = sweep_claims(dirs) + bon_claims(dirs["bon"])
    rows = [c.evaluate(n_boot, seed) for c in claims]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timing = stage_minutes(dirs)
    result = {"n_boot": n_boot, "seed": seed, "rows": rows, "timing": timing, "stage_dirs": {k: str(v) for k, v in dirs.items()},
              "unreadable_runs": dict(UNREADABLE)}
    (out_dir / "claims.json").write_text(json.dumps(result, indent=2))
    figs = draw_plots(out_dir, dirs) if plots else []
    from services.experiments.guard_grade import write_guard_report

    guard = write_guard_report(out_dir, dirs)  # the gold-free guard replayed on these runs and graded against their gold
    result["guard_best_signal"] = guard.get("best_signal")
    (out_dir / "claims.md").write_text(claims_markdown(result, figs))
    return result


__all__ = ["BON_ARGS", "CELL_START_S", "MIN_SEEDS", "README_END", "README_START", "ROOT", "SECONDS_PER_ITERATION", "SPEC_DIR",
           "STAGES", "STAGE_NAMES", "UNREADABLE", "Claim", "Stage", "_Diff", "_Gap", "_LossAtKL", "_need", "bon_claims", "claims_markdown",
           "claims_table", "draw_plots", "fmt", "load_runs", "plan", "plan_table", "ppo_ensemble_arms", "read_run", "run_reproduction",
           "run_stage", "stage_dirs", "stage_minutes", "sweep_claims", "update_readme", "write_claims"]
