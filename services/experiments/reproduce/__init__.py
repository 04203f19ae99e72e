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

from services.experiments.reproduce.catalogue import CATALOGUE, CatalogueError, bon_claims, load_catalogue, ppo_ensemble_arms, sweep_claims
from services.experiments.reproduce.claims import MIN_SEEDS, Claim, RLForm, _Diff, _Gap, _LossAtKL
from services.experiments.reproduce.render import (README_END, README_START, claims_markdown, claims_table, draw_plots, fmt, plan_table,
                                                   update_readme)
from services.experiments.reproduce.runs import LoadedRuns, RunReader, load_runs, read_run
from services.experiments.reproduce.stages import (BON_ARGS, CELL_START_S, WARM_CELL_START_S, ROOT, SECONDS_PER_ITERATION, SPEC_DIR, STAGE_NAMES, STAGES,
                                                   Stage, plan, run_stage, stage_dirs, stage_minutes)


def run_reproduction(out_dir: Path, *, only: list[str] | None = None, progress: bool = True, n_boot: int = 2000,
                     base: str = "default", say: Callable[[str], None] = print, seeds: list[int] | None = None) -> dict:
    """Every stage (or those in ``only``) in order, resumable, then the claims report in ``out_dir``. ``base``: the
    config (preset name or YAML path) the best-of-n stage samples from and whose runs_dir holds the results (the sweep
    stages run their specs' own base). ``seeds``: every sweep stage's, instead of its spec's (`tether reproduce --seeds N`)."""
    from learner.config import load_config

    base_cfg = load_config(base)
    runs_dir = Path(base_cfg.runs_dir)
    stages = [s for s in STAGES if only is None or s.name in only]
    from tqdm.auto import tqdm

    from services.driver.warm import WarmRoles

    pool = WarmRoles()  # warm actors across cells and stages (a new set where a stage needs other actors)
    try:
        for s in tqdm(stages, desc="reproduce", unit="stage", disable=not progress):
            say(f"=== stage {s.name}: {s.what}")
            t0 = time.perf_counter()
            status = run_stage(s, runs_dir, base_cfg, base=base, progress=progress, say=say, pool=pool, seeds=seeds)
            say(f"=== stage {s.name}: {status} ({(time.perf_counter() - t0) / 60:.1f} min)")
    finally:
        pool.close()
    return write_claims(out_dir, runs_dir=runs_dir, base=base, n_boot=n_boot)


def write_claims(out_dir: Path, *, runs_dir: Path | None = None, base: str = "default", n_boot: int = 2000, seed: int = 0,
                 plots: bool = True, only: list[str] | None = None) -> dict:
    """Measure every claim on what has run; write claims.json, claims.md and plots into ``out_dir``. ``runs_dir``:
    where the results are (default: the ``base`` config's). ``only``: the claims of these stages alone (``tether
    reproduce --report-only --only S``; no guard grading then), for a stage measured on its own. The result's
    ``unreadable_runs``: the finished run folders that could not be read (folder -> why), left out of every claim."""
    from learner.config import load_config

    runs_dir = Path(runs_dir or load_config(base).runs_dir)
    dirs = stage_dirs(runs_dir)
    reader = RunReader()
    cat = load_catalogue()
    if only is not None:
        from services.experiments.reproduce.catalogue import Catalogue

        cat = Catalogue({k: v for k, v in cat.root.items() if k in only})
    claims = sweep_claims(dirs, reader, cat) + (bon_claims(dirs["bon"]) if only is None or "bon" in only else [])
    rows = [c.evaluate(n_boot, seed) for c in claims]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timing = stage_minutes(dirs)
    result = {"n_boot": n_boot, "seed": seed, "rows": rows, "timing": timing, "stage_dirs": {k: str(v) for k, v in dirs.items()},
              "unreadable_runs": dict(reader.unreadable), "stages": only}
    (out_dir / "claims.json").write_text(json.dumps(result, indent=2))
    figs = draw_plots(out_dir, dirs, reader, stages=only) if plots else []
    from services.experiments.guard_grade import write_guard_report

    if only is None:
        guard = write_guard_report(out_dir, dirs)  # the gold-free guard replayed on these runs and graded against their gold
        result["guard_best_signal"] = guard.get("best_signal")
    (out_dir / "claims.md").write_text(claims_markdown(result, figs))
    return result


__all__ = ["BON_ARGS", "CATALOGUE", "CELL_START_S", "WARM_CELL_START_S", "MIN_SEEDS", "README_END", "README_START", "ROOT", "SECONDS_PER_ITERATION",
           "SPEC_DIR", "STAGES", "STAGE_NAMES", "CatalogueError", "Claim", "LoadedRuns", "RLForm", "RunReader", "Stage", "_Diff", "_Gap",
           "_LossAtKL", "bon_claims", "claims_markdown", "claims_table", "draw_plots", "fmt", "load_catalogue", "load_runs", "plan",
           "plan_table", "ppo_ensemble_arms", "read_run", "run_reproduction", "run_stage", "stage_dirs", "stage_minutes", "sweep_claims",
           "update_readme", "write_claims"]
