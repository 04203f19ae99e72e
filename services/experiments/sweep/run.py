"""Running a sweep: every unfinished cell in this process or as Ray jobs (at most what the cluster holds),
resumable; one cell (`python -m services.experiments.sweep run-cell DIR`, the Ray job entrypoint)."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from actors.runtime_env import job_env_vars
from learner.config import ConfigError, load_config
from services.experiments.sweep.report import write_sweep_report
from services.state.runlog import latest_checkpoint, read_json, run_state
from services.experiments.sweep.spec import Cell, SweepSpecError, load_sweep, safe_name, write_sweep_files

log = logging.getLogger(__name__)

RAY_DONE = ("SUCCEEDED", "FAILED", "STOPPED")
LOST_AFTER_S = 600.0

@dataclass
class SweepResult:
    """statuses: cell id -> skipped (finished before) | ran | resumed | failed."""

    dir: Path
    statuses: dict[str, str]
    report: Path
    summary: dict = field(default_factory=dict)


def run_cell(cell_dir: str | Path, *, progress: bool = True, run_id: str | None = None, redis_url: str | None = None, pool=None) -> str:
    """Run the cell in ``cell_dir`` (its cell.yaml): skipped when finished, resumed from a checkpoint when
    there is one, else started afresh (logs of an attempt that died before its first checkpoint are cleared).
    With ``run_id`` and ``redis_url`` it reports to that Redis (a `tether serve`'s) as that run: metrics,
    state, commands. ``pool``: a warm sweep's WarmRoles (services/driver/warm.py) lends the actors. Returns
    skipped | resumed | ran. The entrypoint of a sweep's Ray jobs (``cell_entrypoint``)."""
    from services.driver.train import run_or_resume

    cell_dir = Path(cell_dir)
    spec = cell_dir / "cell.yaml"
    if not spec.is_file():
        raise SweepSpecError(f"{cell_dir} is not a sweep cell folder (no cell.yaml)")
    if run_state(cell_dir) == "finished":
        return "skipped"
    cfg = load_config(spec)
    control = None
    if run_id and redis_url:
        from services.driver.control import RunControl

        control = RunControl(redis_url, run_id)
        control.register(name=cfg.name, config=cfg.dump())
    return run_or_resume(cfg, cell_dir, cfg_source=str(spec), progress=progress, control=control, pool=pool)[0]


def cell_entrypoint(cell_dir: str | Path, *, python: str | None = None, run_id: str | None = None, redis_url: str | None = None) -> str:
    """The shell command a Ray job runs for one cell: this interpreter's ``-m services.experiments.sweep run-cell <abs folder>``
    (``--run-id ID --redis-url URL`` to report to a service's Redis)."""
    q = shlex.quote
    cmd = f"{q(python or sys.executable)} -m services.experiments.sweep run-cell {q(str(Path(cell_dir).resolve()))}"
    if run_id and redis_url:
        cmd += f" --run-id {q(run_id)} --redis-url {q(redis_url)}"
    return cmd


def _check_assets(cells: list[Cell]) -> None:
    """Every cell's task assets, by the task's own stage keys (AssetError with the `tether prepare` command). Each cell is
    resolved: a dedupe by config sections kept here once left out `generation`, which the proxy stage's key includes, so
    a sweep over generation.* never checked its later cells (resolving is a few stat calls and manifest reads per cell)."""
    from tasks import get_task

    for c in cells:
        get_task(c.config).resolve(cfg_source=str(c.dir / "cell.yaml"))


def run_sweep(spec_path: str | Path, sweep_dir: str | Path | None = None, *, submit: str | None = None, progress: bool = True,
              ray_auth: str = "token", max_parallel: int | None = None, poll_s: float = 5.0,
              notify: Callable[[str], None] | None = None, redis_url: str | None = None, warm: bool = True, pool=None,
              seeds: list[int] | None = None) -> SweepResult:
    """Run every unfinished cell of a sweep, then write its report.

    Locally (``submit`` None) cells run one after another in this process, on warm actors (``warm``; services/driver/
    warm.py: consecutive cells that need the same actors share them; ``pool`` a WarmRoles of the caller's, kept
    open, e.g. across the stages of `tether reproduce`; ``seeds`` instead of the spec's); with ``submit`` = a Ray
    dashboard address each is a Ray job (at most ``max_parallel`` at a time; None = as many as the cluster's
    CPUs/GPUs hold for what a cell declares, see ``auto_parallel``), waited for.
    ``notify`` receives one line per cell started / skipped (default: logging). With ``redis_url`` (a
    `tether serve`'s Redis) each submitted cell is also a run of that service: its record (name = the cell
    id), metrics and commands, so the page and the API show it. Raises SweepSpecError
    before anything runs when any cell's config is invalid, AssetError when task assets are missing.
    """
    say = notify or log.info
    sweep = load_sweep(spec_path, sweep_dir, seeds=seeds)
    write_sweep_files(sweep)
    _check_assets(sweep.cells)
    statuses: dict[str, str] = {}
    todo = []
    for c in sweep.cells:
        if run_state(c.dir) == "finished":
            statuses[c.id] = "skipped"
            say(f"== {c.id}: finished already, skipped")
        else:
            todo.append(c)
    bar = tqdm(total=len(sweep.cells), initial=len(statuses), desc=f"sweep {sweep.name}", unit="cell", disable=not progress)
    try:
        if submit is None:
            from services.driver.warm import WarmRoles

            own = pool is None and warm
            lend = WarmRoles() if own else pool if warm else None
            try:
                for c in todo:
                    say(f"== {c.id}: {'resuming' if latest_checkpoint(c.dir) is not None else 'starting'} in {c.dir}")
                    statuses[c.id] = _run_local(c, progress=progress, pool=lend)
                    bar.update(1)
            finally:
                if own:
                    lend.close()
        elif todo:
            from services.state.jobs import RayJobs

            jobs = RayJobs(submit, auth=ray_auth)
            if max_parallel is None:
                max_parallel = auto_parallel(todo, jobs)
                say(f"== at most {max_parallel} cell job(s) at once (what the cluster's CPUs/GPUs hold; --max-parallel to change)")
            statuses.update(_run_ray(todo, jobs, sweep_name=sweep.name, max_parallel=max_parallel, poll_s=poll_s, say=say, bar=bar,
                                     redis_url=redis_url))
    finally:
        bar.close()
    report = write_sweep_report(sweep.dir)
    summary = json.loads((sweep.dir / "sweep_summary.json").read_text())
    return SweepResult(sweep.dir, {c.id: statuses[c.id] for c in sweep.cells}, report, summary)


def auto_parallel(cells: list[Cell], jobs) -> int:
    """How many cells fit side by side in the cluster: its total CPUs (GPUs) over the most any cell declares.
    Jobs that do not fit would each wait for their placement group and fail after runtime.connect_timeout_s."""
    from services.state.jobs import run_resources

    try:
        cap = jobs.cluster_resources()
    except Exception as e:  # noqa: BLE001 - submission will report an unreachable dashboard with the address
        log.warning("cannot read the cluster's resources (%s): one cell job at a time", e)
        return 1
    need = [run_resources(c.config) for c in cells]
    fits = []
    for k in ("CPU", "GPU"):
        most = max(n[k] for n in need)
        if most > 0:
            fits.append(int(cap.get(k, 0.0) // most + 1e-9))
    if fits and min(fits) < 1:
        worst = max(need, key=lambda n: (n["GPU"], n["CPU"]))
        raise RuntimeError(f"a cell declares {worst['CPU']:g} CPUs and {worst['GPU']:g} GPUs, more than the whole cluster at "
                           f"{jobs.address} ({cap.get('CPU', 0):g} CPUs, {cap.get('GPU', 0):g} GPUs); lower runtime.<role> resources")
    return max(1, min(fits)) if fits else len(cells)


def _run_local(c: Cell, *, progress: bool, pool=None) -> str:
    from actors.errors import RuntimeSetupError
    from tasks.store import AssetError

    try:
        return run_cell(c.dir, progress=progress, pool=pool)
    except (AssetError, RuntimeSetupError, SweepSpecError):
        raise  # the same for every cell: stop and say so
    except Exception:  # noqa: BLE001 - one broken cell must not lose the others; the traceback is logged
        log.exception("cell %s failed", c.id)
        return "failed"


def _register(redis_url: str, c: Cell, job_id: str) -> str:
    """A service run record for a submitted cell (state 'submitted'; the trainer reports the rest)."""
    from services.state.redis_store import RunStore
    from services.state.jobs import run_resources
    from services.state.redis_store import LIVE

    run_id = f"sw-{uuid.uuid4().hex[:8]}"
    # `resources`: the service's admission counts what this cell holds on the cluster while its job runs
    RunStore(redis_url).create_run(run_id, {"name": c.id, "config": c.config.dump(), "job_id": job_id, "state": "submitted",
                                            "job_status": "PENDING", "sweep": c.id, "config_path": str((c.dir / "cell.yaml").resolve()),
                                            "resources": run_resources(c.config)})
    RunStore(redis_url).r.sadd(LIVE, run_id)  # the service's scheduler follows its job and counts what it holds
    return run_id


def _run_ray(cells: list[Cell], jobs, *, sweep_name: str, max_parallel: int | None, poll_s: float, say, bar,
             redis_url: str | None = None) -> dict[str, str]:
    """Submit each cell as a Ray job (adopting one still running from an earlier call), wait, return statuses."""
    out: dict[str, str] = {}
    pending = list(cells)
    running: dict[str, Cell] = {}
    resumed: set[str] = set()
    seen: dict[str, float] = {}  # job id -> last time the dashboard answered about it
    while pending or running:
        while pending and (not max_parallel or len(running) < max_parallel):
            c = pending.pop(0)
            prev = read_json(c.dir / "job.json").get("job_id")
            if prev and jobs.status(prev) in ("PENDING", "RUNNING"):
                say(f"== {c.id}: Ray job {prev} still running, waiting for it")
                running[prev] = c
                continue
            job_id = safe_name(f"tether-sweep-{sweep_name}-{c.method}-{uuid.uuid4().hex[:8]}", allowed=r"A-Za-z0-9_-", limit=100)
            if latest_checkpoint(c.dir) is not None:
                resumed.add(c.id)
            run_id = _register(redis_url, c, job_id) if redis_url else None
            try:
                jobs.submit(cell_entrypoint(c.dir, run_id=run_id, redis_url=redis_url), job_id=job_id, env=job_env_vars())
            except Exception as e:  # noqa: BLE001 - reported with the address; jobs already submitted keep running
                if run_id:
                    from services.state.redis_store import RunStore

                    RunStore(redis_url).update_run(run_id, state="submit_failed", error=f"Ray job submission failed: {e}")
                raise RuntimeError(f"Ray job submission to {jobs.address} failed for cell {c.id}: {e}") from None
            (c.dir / "job.json").write_text(json.dumps({"job_id": job_id, "address": jobs.address, "run_id": run_id}))
            say(f"== {c.id}: submitted as Ray job {job_id}")
            running[job_id] = c
        time.sleep(poll_s)
        for job_id, c in list(running.items()):
            st = jobs.status(job_id)
            if st is not None:
                seen[job_id] = time.monotonic()
            elif time.monotonic() - seen.setdefault(job_id, time.monotonic()) > LOST_AFTER_S:
                st = "LOST"  # the dashboard has not answered for this job in 10 minutes: stop waiting (a rerun adopts it if it runs)
            if st not in (*RAY_DONE, "LOST"):
                continue
            del running[job_id]
            ok = st == "SUCCEEDED" and run_state(c.dir) == "finished"
            out[c.id] = ("resumed" if c.id in resumed else "ran") if ok else "failed"
            if not ok:
                try:
                    tail = jobs.logs(job_id)[-2000:]
                except Exception:  # noqa: BLE001 - logs are a courtesy
                    tail = "(no logs)"
                log.error("cell %s: Ray job %s ended %s, cell state %s; log tail:\n%s", c.id, job_id, st, run_state(c.dir), tail)
            say(f"== {c.id}: Ray job {job_id} {st}")
            bar.update(1)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m services.experiments.sweep run-cell DIR``: the entrypoint of one cell's Ray job."""
    p = argparse.ArgumentParser(prog="python -m services.experiments.sweep", description="run one cell of a tether sweep (the Ray job entrypoint)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("run-cell", help="run (or resume, or skip when finished) the sweep cell in DIR")
    sp.add_argument("dir")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--run-id", help="report to a `tether serve`'s Redis as this run (with --redis-url)")
    sp.add_argument("--redis-url", help="that service's Redis, e.g. redis://127.0.0.1:16379/0")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        state = run_cell(args.dir, progress=not args.no_progress, run_id=args.run_id, redis_url=args.redis_url)
    except ConfigError as e:
        sys.exit(f"tether sweep: {e}")
    print(f"cell {args.dir}: {state}")
    return 0


