"""The reproduction's stages and running them: each a sweep spec (configs/sweeps/overopt.yaml, configs/reproduce/*.yaml)
or the best-of-n experiment, resumable (finished cells are skipped, a cell with a checkpoint resumes); the plan
(cells, minutes left) and the minutes each stage's finished work took."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from learner.config.load import PRESETS_DIR
from services.state.runlog import read_json

log = logging.getLogger(__name__)

ROOT = PRESETS_DIR.parent
SPEC_DIR = PRESETS_DIR / "reproduce"
BON_ARGS = {"n_max": 512, "n_best": 256, "n_prompts": 32, "uwo_lambda": 0.5}
# For a stage none of whose cells has finished yet: PPO on the default task here (2 cores), the median per iteration of
# overopt's ppo_kl001 cells measured 2026-12-07 (11.5-12.8 s; evaluations and checkpoints included; 8.5 s in an earlier,
# quieter session). The group estimators of critic_free took about 7.3 s.
SECONDS_PER_ITERATION = 11.5
CELL_START_S = 20.6  # a cold cell's start until its first iteration: Ray actors, vLLM, every model (bench/warm_sweep.py, 2026-12-07)
WARM_CELL_START_S = 6.3  # a warm cell's (services/driver/warm.py): a fresh learner, a rebind, one sync (the same bench)


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    spec: Path | None = None  # a sweep spec; None = the best-of-n stage
    warm: bool = True  # its cells share warm actors; not where each cell writes its own policy folder (SALSA's soup, Quark's tokens)

    @property
    def kind(self) -> str:
        return "sweep" if self.spec is not None else "bon"


STAGES = (
    Stage("overopt", "Gao et al.: PPO with KL 0 and 0.01 over-optimises; the RL form's fit (also the ensemble mean arm)",
          ROOT / "configs" / "sweeps" / "overopt.yaml"),
    Stage("elastic_reset", "Elastic Reset vs PPO + KL (0.01 from overopt, 0.05 here)", SPEC_DIR / "elastic_reset.yaml"),
    Stage("ensembles", "PPO with a single proxy, WCO and UWO (the mean is overopt's KL 0 arm)", SPEC_DIR / "ensembles.yaml"),
    Stage("ensembles_clean", "PPO with a single proxy, the mean, WCO and UWO on clean labels (no label noise)",
          SPEC_DIR / "ensembles_clean.yaml"),
    Stage("bon", "best-of-n to n = 256 from N = 512 samples per prompt, noisy and clean labels, every aggregation"),
    Stage("quark", "Quark vs PPO + KL on toxicity", SPEC_DIR / "quark.yaml", warm=False),
    Stage("salsa", "SALSA (soup) vs its one-SFT-model baseline", SPEC_DIR / "salsa.yaml", warm=False),
    Stage("fdpg", "f-DPG: JS vs forward KL vs reverse KL towards one RLHF target", SPEC_DIR / "fdpg.yaml"),
    Stage("critic_free", "GRPO, Dr. GRPO and RLOO vs PPO (GAE; overopt's KL 0.01 arm) at the same KL coefficient (a measured "
          "comparison)", SPEC_DIR / "critic_free.yaml"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_dirs(runs_dir: Path) -> dict[str, Path]:
    """Where each stage's results live (the sweeps' default folders, so `tether sweep SPEC` and this share them)."""
    from services.experiments.sweep import load_sweep

    out = {}
    for s in STAGES:
        out[s.name] = load_sweep(s.spec).dir if s.spec is not None else Path(runs_dir) / "reproduce-bon"
    return {k: (v if v.is_absolute() else Path.cwd() / v) for k, v in out.items()}


def cell_run_s(cell_dir: Path) -> float | None:
    """Seconds a finished cell ran: from its config.json (written once its actors are up) to its status.json (written when
    it finished): iterations, evaluations and checkpoints, not the start. None when it has not finished."""
    from services.state.runlog import run_state

    if run_state(cell_dir) != "finished" or not (cell_dir / "config.json").is_file():
        return None
    return (cell_dir / "status.json").stat().st_mtime - (cell_dir / "config.json").stat().st_mtime


def measured_iteration_s(cells) -> float | None:
    """Seconds per iteration of a stage's finished cells (cell_run_s over its iterations), their median; None when none has
    finished."""
    import statistics

    per = [t / c.config.train.iterations for c in cells if (t := cell_run_s(c.dir)) is not None]
    return statistics.median(per) if per else None


def plan(runs_dir: Path, seeds: list[int] | None = None) -> list[dict]:
    """Per stage: cells, iterations, cells already finished, and the minutes left on this machine: per iteration as the
    stage's finished cells measured (else SECONDS_PER_ITERATION), per cell its start (the first cold, the others warm
    where the stage shares actors). ``seeds``: every sweep stage's, instead of its spec's."""
    from services.state.runlog import run_state
    from services.experiments.sweep import load_sweep

    rows = []
    for s in STAGES:
        if s.spec is None:
            done = (stage_dirs(runs_dir)["bon"] / "samples.npz").is_file()
            n = BON_ARGS["n_max"] * BON_ARGS["n_prompts"]
            rows.append({"stage": s.name, "what": s.what, "cells": 1, "finished": int(done), "iterations": 0,
                         "minutes_left": 0.0 if done else n / 2200.0 + 3.0, "s_per_iteration": None})
            continue
        sw = load_sweep(s.spec, seeds=seeds)
        left = [c for c in sw.cells if run_state(c.dir) != "finished"]
        its = sum(c.config.train.iterations for c in left)
        measured = measured_iteration_s(sw.cells)
        per_it = measured if measured is not None else SECONDS_PER_ITERATION
        starts = (CELL_START_S + (len(left) - 1) * (WARM_CELL_START_S if s.warm else CELL_START_S)) if left else 0.0
        rows.append({"stage": s.name, "what": s.what, "cells": len(sw.cells), "finished": len(sw.cells) - len(left),
                     "iterations": sum(c.config.train.iterations for c in sw.cells), "s_per_iteration": measured,
                     "minutes_left": (its * per_it + starts) / 60.0})
    return rows


def _prepare_assets(cells) -> None:
    """Build every asset the cells need that is missing (cached stages are reused; each cell resolved by its task's keys)."""
    from tasks import get_task
    from tasks.store import AssetError

    for c in cells:
        task = get_task(c.config)
        try:
            task.resolve()
        except AssetError:
            log.info("building the assets of %s", c.id)
            task.prepare()


def run_stage(stage: Stage, runs_dir: Path, base_cfg, *, base: str = "default", progress: bool = True,
              say: Callable[[str], None] = print, pool=None, seeds: list[int] | None = None) -> str:
    """Run (or resume, or skip) one stage; returns 'done' or 'failed: ...'. The best-of-n stage samples from ``base_cfg``,
    loaded from ``base`` (a preset name or YAML path; its clean-label twin is ``base`` with proxy.label_noise=0). ``pool``:
    the warm actors (a WarmRoles) the sweep stages share; the best-of-n stage closes them first (it runs its own engine).
    ``seeds``: a sweep stage's seeds instead of its spec's."""
    from services.experiments.sweep import load_sweep, run_sweep

    if stage.kind == "sweep":
        sw = load_sweep(stage.spec, seeds=seeds)
        _prepare_assets(sw.cells)
        if pool is not None and not stage.warm:
            pool.close()  # the held actors' placement group would keep this stage's cold cells from placing theirs
        res = run_sweep(stage.spec, progress=progress, notify=say, pool=pool if stage.warm else None, warm=stage.warm, seeds=seeds)
        failed = [k for k, v in res.statuses.items() if v == "failed"]
        return f"failed: {', '.join(failed)}" if failed else "done"
    out = stage_dirs(runs_dir)["bon"]
    if (out / "samples.npz").is_file() and (out / "bon.json").is_file():
        say(f"== bon: finished already in {out}, skipped")
        return "done"
    if pool is not None:
        pool.close()
    from learner.config import load_config
    from services.experiments.bon import run_bon
    from tasks import get_task

    clean = load_config(base, ["proxy.label_noise=0"])
    for cfg in (base_cfg, clean):
        get_task(cfg).prepare()
    run_bon(base_cfg, out, n_max=BON_ARGS["n_max"], n_prompts=BON_ARGS["n_prompts"], n_best=BON_ARGS["n_best"], clean_cfg=clean,
            uwo_lambda=BON_ARGS["uwo_lambda"], progress=progress, cfg_source=str(base))
    return "done"


def stage_minutes(dirs: dict[str, Path]) -> dict[str, dict]:
    """Minutes each stage's finished work took, measured from its run folders: per sweep cell from its config.json
    (written once the cell's actors are up) to its status.json (written when it finished); the best-of-n stage's
    own timing. Ray and vLLM start-up (about half a minute per cell) is not included."""
    out = {}
    for s in STAGES:
        d = dirs[s.name]
        if s.spec is None:
            t = read_json(d / "bon.json").get("timing", {})
            if t.get("time_s/total") is not None:
                out[s.name] = {"minutes": float(t["time_s/total"]) / 60.0, "cells": 1}
            continue
        meta = read_json(d / "cells.json")
        took = [t for c in meta.get("cells", []) if (t := cell_run_s(d / c["dir"])) is not None]
        mins, n = sum(took) / 60.0, len(took)
        if n:
            out[s.name] = {"minutes": mins, "cells": n, "of": len(meta.get("cells", []))}
    return out
