"""`tether sweep`: methods x coefficient grids x seeds, run cell by cell (resumable), one report with scaling-law fits.

Spec (YAML; example in configs/sweeps/imdb.yaml)::

    name: imdb-sweep                 # letters, digits, '_', '.', '-' (default: the spec file's stem)
    base: default                    # preset name or YAML path (relative to the spec's folder, then the
                                     # working directory); its `variants` are ignored
    set: {train.iterations: 12}      # dotted overrides applied to every cell (optional)
    seeds: [0, 1]                    # train.seed per cell (optional; default: each cell's own train.seed)
    methods:                         # method name -> partial config, plus an optional grid
      ppo_kl:
        config: {kl: {mode: fixed}}
        grid: {kl.coef: [0.01, 0.05]}  # dotted field -> list of values; cartesian product
      elastic_reset:
        config: {kl: {mode: fixed, coef: 0.01}, elastic_reset: {enabled: true, every: 10}}

Cells = for each method: the product of its grid values x seeds. A cell's config is the base dict,
deep-merged with ``set``, the method's ``config``, the cell's grid values and ``train.seed``, then
validated with the one schema (learner.config), so every config field (``algorithm``, ``fdpg``, ...)
works here too. As for `variants`, a method that switches ``algorithm`` does not inherit the base's
sections of the other algorithms. Every cell is validated before anything runs.

Layout of a sweep folder (default ``<runs_dir>/sweep-<name>``; the same command resumes it)::

    cells.json                        resolved spec + every cell's id, folder and full config
    <method>/<setting>/seed-<s>/      one run folder per cell, setting e.g. 'kl.coef=0.05' or 'default'
        cell.yaml                     the cell's config; `python -m services.sweep run-cell <folder>` runs it
    report.html, *.png, sweep_summary.json

Re-running skips finished cells (status.json) and resumes cells with a checkpoint; a cell folder
that holds a run of a different config is refused rather than silently mixed. With ``submit``
(a Ray dashboard address) every unfinished cell is its own Ray job running ``run-cell``; the sweep
folder must then be on a filesystem the cluster's nodes share.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import logging
import math
import re
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel
from tqdm.auto import tqdm

from actors.placement import job_env_vars
from learner.config import (PRESETS_DIR, ConfigError, TetherConfig, _deep_merge, _validate, load_config, read_config_file,
                            without_other_algorithms)

log = logging.getLogger(__name__)
SPEC_KEYS = ("name", "base", "set", "seeds", "methods")
METHOD_KEYS = ("config", "grid")
RESERVED = {"name": "cell names are derived from the sweep's name", "variants": "a sweep's methods take the place of variants",
            "train.seed": "list seeds under `seeds:`"}
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,47}$")
RAY_DONE = ("SUCCEEDED", "FAILED", "STOPPED")
LOST_AFTER_S = 600.0
FINAL_KEYS = {"gold": "eval/gold_mean", "proxy": "eval/proxy_mean", "kl": "eval/kl_from_init_k3", "gap": "eval/proxy_gold_gap"}


class SweepSpecError(ConfigError):
    """A sweep spec that cannot be used: the message names the key and what is accepted."""


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: ``values`` are its grid values (dotted field -> value); ``dir`` its run folder."""

    id: str
    method: str
    setting: str
    seed: int
    values: dict[str, Any]
    dir: Path
    config: TetherConfig


@dataclass
class Sweep:
    name: str
    dir: Path
    spec: dict
    cells: list[Cell]


@dataclass
class SweepResult:
    """statuses: cell id -> skipped (finished before) | ran | resumed | failed."""

    dir: Path
    statuses: dict[str, str]
    report: Path
    summary: dict = field(default_factory=dict)


# -- the spec ----------------------------------------------------------------------------------------
def _check_field(dotted: str, where: str) -> None:
    """Raise unless ``dotted`` (e.g. 'kl.coef') names a field of TetherConfig."""
    if dotted in RESERVED:
        raise SweepSpecError(f"{where}: '{dotted}' cannot be set here: {RESERVED[dotted]}")
    model: type[BaseModel] = TetherConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            owner = ".".join(parts[:i]) or "the top level"
            raise SweepSpecError(f"{where}: '{dotted}' is not a config field ('{part}' is not a field of {owner}; "
                                 f"accepted there: {', '.join(sorted(fields))})")
        ann = fields[part].annotation
        if i < len(parts) - 1 and not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            raise SweepSpecError(f"{where}: '{dotted}' is not a config field ('{'.'.join(parts[: i + 1])}' is a value, not a section)")
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann


def _nest(flat: dict[str, Any]) -> dict:
    """{'kl.coef': 0.05} -> {'kl': {'coef': 0.05}} (later keys deep-merge into earlier ones)."""
    out: dict = {}
    for key, value in flat.items():
        node: dict = {}
        inner = node
        parts = str(key).split(".")
        for p in parts[:-1]:
            inner = inner.setdefault(p, {})
        inner[parts[-1]] = copy.deepcopy(value)
        _deep_merge(out, node)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float, str)):
        return repr(v) if isinstance(v, float) else str(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _safe(s: str, *, allowed: str = r"A-Za-z0-9._=,+-", limit: int = 100) -> str:
    """A filesystem-safe rendering; long ones keep a hash of the whole so two never collide."""
    out = re.sub(f"[^{allowed}]", "_", s).lstrip(".") or "_"
    if len(out) > limit:
        out = out[: limit - 9] + "-" + hashlib.sha1(s.encode()).hexdigest()[:8]
    return out


def _mapping(x: Any, where: str, what: str) -> dict:
    if x is None:
        return {}
    if not isinstance(x, dict):
        raise SweepSpecError(f"{where}: must be a mapping ({what}), got {type(x).__name__} {x!r}")
    return x


def _load_base(base: Any, spec_path: Path) -> tuple[dict, Path]:
    if not isinstance(base, str) or not base:
        raise SweepSpecError(f"sweep spec {spec_path}: 'base' is required: a preset name (e.g. default, tiny) or a YAML path")
    for cand in (spec_path.parent / base, Path(base)):
        if cand.is_file():
            path = cand
            break
    else:
        path = PRESETS_DIR / f"{base}.yaml"
        if not path.is_file():
            presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise SweepSpecError(f"sweep spec {spec_path}: base '{base}' is neither a YAML file (relative to the spec's folder or the "
                                 f"working directory) nor a preset; presets: {presets}")
    try:
        data = read_config_file(path)
    except ConfigError as e:
        raise SweepSpecError(f"base: {e}") from None
    data.pop("variants", None)
    return data, path.resolve()


def _algorithm(*layers: dict) -> str:
    for layer in reversed(layers):
        if "algorithm" in layer:
            return layer["algorithm"]
    return "ppo"


def _seeds(seeds: Any, where: str) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise SweepSpecError(f"{where}: 'seeds' must be a non-empty list of integers (train.seed per cell), got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepSpecError(f"{where}: 'seeds' lists a seed twice: {seeds}")
    return seeds


def _method(mname: Any, m: Any, where: str, *, seeds: list[int] | None) -> tuple[dict, dict]:
    """Check one entry of ``methods``; returns (its config, nested; its grid: dotted field -> values)."""
    if not (isinstance(mname, str) and NAME_RE.match(mname)):
        raise SweepSpecError(f"{where}: method names must be 1-48 letters, digits, '_', '.', '-' (they name folders)")
    m = _mapping(m, where, f"keys {', '.join(METHOD_KEYS)}")
    bad = sorted(set(m) - set(METHOD_KEYS))
    if bad:
        raise SweepSpecError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}; accepted keys: {', '.join(METHOD_KEYS)}")
    mconf = _mapping(m.get("config"), f"{where}: 'config'", "a partial config, e.g. {kl: {coef: 0.05}}")
    for k in mconf:
        if str(k) in ("name", "variants"):
            raise SweepSpecError(f"{where}: 'config' cannot set '{k}': {RESERVED[str(k)]}")
    mconf = _nest(mconf)  # its fields are checked by the schema, per cell
    if seeds is not None and isinstance(mconf.get("train"), dict) and "seed" in mconf["train"]:
        raise SweepSpecError(f"{where}: 'config' sets train.seed, but the spec lists seeds; {RESERVED['train.seed']}")
    grid = _mapping(m.get("grid"), f"{where}: 'grid'", "dotted config field -> list of values, e.g. {kl.coef: [0.01, 0.05]}")
    for k, vals in grid.items():
        _check_field(str(k), f"{where}: grid")
        if not isinstance(vals, list) or not vals:
            raise SweepSpecError(f"{where}: grid values of '{k}' must be a non-empty list, got {type(vals).__name__} {vals!r} "
                                 f"(write [{_fmt(vals)}] for one value)")
        if len({_fmt(v) for v in vals}) != len(vals):
            raise SweepSpecError(f"{where}: grid values of '{k}' list a value twice: {vals}")
    return mconf, {str(k): v for k, v in grid.items()}


def load_sweep(spec_path: str | Path, sweep_dir: str | Path | None = None) -> Sweep:
    """Parse a spec and build (and validate) every cell; nothing is written. Raises SweepSpecError, naming
    every invalid cell at once."""
    spec_path = Path(spec_path)
    where = f"sweep spec {spec_path}"
    if not spec_path.is_file():
        raise SweepSpecError(f"{where}: no such file")
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as e:
        raise SweepSpecError(f"{where}: not valid YAML: {e}") from None
    spec = _mapping(spec, where, f"top-level keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SweepSpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; accepted keys: {', '.join(SPEC_KEYS)}")
    name = str(spec.get("name") or _safe(spec_path.stem, allowed=r"A-Za-z0-9_.-", limit=48))
    if not NAME_RE.match(name):
        raise SweepSpecError(f"{where}: name {name!r} must be 1-48 letters, digits, '_', '.', '-' (not starting with '.' or '-')")
    base, base_path = _load_base(spec.get("base"), spec_path)
    overrides = _mapping(spec.get("set"), f"{where}: 'set'", "dotted config field -> value, e.g. {train.iterations: 12}")
    for k in overrides:
        _check_field(str(k), f"{where}: 'set'")
    seeds = _seeds(spec.get("seeds"), where)
    methods = _mapping(spec.get("methods"), f"{where}: 'methods'", "method name -> {config: ..., grid: ...}")
    if not methods:
        raise SweepSpecError(f"{where}: 'methods' is empty; give at least one method, e.g. methods: {{ppo_kl: {{config: {{kl: {{coef: 0.05}}}}}}}}")
    resolved = {m: dict(zip(("config", "grid"), _method(m, body, f"{where}: method '{m}'", seeds=seeds))) for m, body in methods.items()}
    set_nested = _nest(overrides)
    if sweep_dir is None:
        sweep_dir = Path(_deep_merge(copy.deepcopy(base), copy.deepcopy(set_nested)).get("runs_dir", "runs")) / f"sweep-{name}"
    root = Path(sweep_dir)

    cells: list[Cell] = []
    errors: list[str] = []
    for mname, m in resolved.items():
        for combo in itertools.product(*m["grid"].values()):
            values = dict(zip(m["grid"], combo))
            setting = ",".join(f"{k}={_fmt(v)}" for k, v in values.items()) or "default"
            gnested = _nest(values)
            # As for variants: the base's sections of other algorithms were written for the base's method.
            algo = _algorithm(base, set_nested, m["config"], gnested)
            inherited = without_other_algorithms(base, algo)
            for seed in seeds if seeds is not None else [None]:
                merged = copy.deepcopy(inherited)
                for layer in (set_nested, m["config"], gnested, {} if seed is None else {"train": {"seed": seed}}):
                    _deep_merge(merged, copy.deepcopy(layer))
                if isinstance(merged.get("data_dir", "data"), str):  # cells may run anywhere (a Ray job's working directory is not ours)
                    merged["data_dir"] = str(Path(merged.get("data_dir", "data")).resolve())
                train = merged.get("train")
                s = seed if seed is not None else (train.get("seed", 0) if isinstance(train, dict) else 0)
                cid = f"{mname}/{setting}/seed-{s}"
                merged["name"] = _cell_name(name, mname, setting, s)
                try:
                    cells.append(Cell(cid, mname, setting, s, values, root / mname / _safe(setting) / f"seed-{s}",
                                      _validate(merged, source=f"cell '{cid}'")))
                except ConfigError as e:
                    errors.append(str(e))
    if errors:
        raise SweepSpecError(f"{where}: {len(errors)} cell(s) have an invalid config; nothing was run:\n" + "\n".join(errors))
    folders = [c.dir for c in cells]
    if len(set(folders)) != len(folders):
        dup = sorted({str(f) for f in folders if folders.count(f) > 1})
        raise SweepSpecError(f"{where}: two cells map to the same folder ({', '.join(dup)}); "
                             "use grid values that still differ once made filesystem-safe")
    spec_out = {"name": name, "spec_path": str(spec_path.resolve()), "base": str(base_path), "set": overrides, "seeds": seeds, "methods": resolved}
    return Sweep(name, root, spec_out, cells)


def _cell_name(sweep: str, method: str, setting: str, seed: int) -> str:
    return _safe(f"{sweep}-{method}-{setting}-s{seed}".replace("=", "").replace(",", "_"), allowed=r"A-Za-z0-9_.-", limit=64)


# -- writing and running ------------------------------------------------------------------------------
def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted fields whose values differ; keys present on one side only are ignored (schema upgrades)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in old.keys() & new.keys() for d in _diff(old[k], new[k], f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def write_sweep_files(sweep: Sweep) -> Path:
    """cells.json and each cell's cell.yaml; refuses when a cell folder holds a run of another config."""
    stale = []
    for c in sweep.cells:
        f = c.dir / "config.json"
        if f.exists():
            diff = [d for d in _diff(json.loads(f.read_text()), c.config.model_dump(mode="json")) if not d.startswith("runs_dir:")]
            if diff:
                stale.append(f"  - {c.id}: {'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}")
    if stale:
        raise SweepSpecError(f"the sweep folder {sweep.dir} holds cells run with a different config (stored -> now):\n" + "\n".join(stale)
                             + "\nuse another --dir, or delete those cell folders to run them again")
    sweep.dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for c in sweep.cells:
        c.dir.mkdir(parents=True, exist_ok=True)
        (c.dir / "cell.yaml").write_text(yaml.safe_dump(c.config.dump(), sort_keys=False))
        cells.append({"id": c.id, "method": c.method, "setting": c.setting, "seed": c.seed, "values": c.values,
                      "dir": str(c.dir.relative_to(sweep.dir)), "config": c.config.model_dump(mode="json")})
    path = sweep.dir / "cells.json"
    path.write_text(json.dumps({"spec": sweep.spec, "cells": cells}, indent=2))
    return path


def cell_state(cell_dir: Path) -> str | None:
    """The state in status.json (finished, running, failed, stopped) or None."""
    try:
        return json.loads((Path(cell_dir) / "status.json").read_text()).get("state")
    except (OSError, json.JSONDecodeError):
        return None


def _has_checkpoint(cell_dir: Path) -> bool:
    ck = Path(cell_dir) / "checkpoints"
    return ck.is_dir() and any(p.name.startswith("step-") and (p / "driver.json").exists() for p in ck.iterdir())


def run_cell(cell_dir: str | Path, *, progress: bool = True, run_id: str | None = None, redis_url: str | None = None) -> str:
    """Run the cell in ``cell_dir`` (its cell.yaml): skipped when finished, resumed from a checkpoint when
    there is one, else started afresh (logs of an attempt that died before its first checkpoint are cleared).
    With ``run_id`` and ``redis_url`` it reports to that Redis (a `tether serve`'s) as that run: metrics,
    state, commands. Returns skipped | resumed | ran. The entrypoint of a sweep's Ray jobs (``cell_entrypoint``)."""
    from services.report import write_run_report
    from services.train import train

    cell_dir = Path(cell_dir)
    spec = cell_dir / "cell.yaml"
    if not spec.is_file():
        raise SweepSpecError(f"{cell_dir} is not a sweep cell folder (no cell.yaml)")
    if cell_state(cell_dir) == "finished":
        return "skipped"
    cfg = load_config(spec)
    resume = _has_checkpoint(cell_dir)
    if not resume:
        for stale in ("metrics.jsonl", "summary.json", "status.json"):
            (cell_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(cell_dir / "tb", ignore_errors=True)
    control = None
    if run_id and redis_url:
        from services.control import RunControl

        control = RunControl(redis_url, run_id)
        control.register(name=cfg.name, config=cfg.dump())
    train(cfg, cell_dir, cfg_source=str(spec), progress=progress, resume=resume, control=control)
    write_run_report(cell_dir, cfg.name)
    return "resumed" if resume else "ran"


def cell_entrypoint(cell_dir: str | Path, *, python: str | None = None, run_id: str | None = None, redis_url: str | None = None) -> str:
    """The shell command a Ray job runs for one cell: this interpreter's ``-m services.sweep run-cell <abs folder>``
    (``--run-id ID --redis-url URL`` to report to a service's Redis)."""
    q = shlex.quote
    cmd = f"{q(python or sys.executable)} -m services.sweep run-cell {q(str(Path(cell_dir).resolve()))}"
    if run_id and redis_url:
        cmd += f" --run-id {q(run_id)} --redis-url {q(redis_url)}"
    return cmd


def _check_assets(cells: list[Cell]) -> None:
    from learner.assets.build import resolve

    seen = set()
    for c in cells:
        key = json.dumps(c.config.model_dump(mode="json", include={"data_dir", "task", "tokenizer", "policy", "gold", "proxy", "reference"}),
                         sort_keys=True)
        if key not in seen:
            seen.add(key)
            resolve(c.config, cfg_source=str(c.dir / "cell.yaml"))  # AssetError with the `tether prepare` command


def run_sweep(spec_path: str | Path, sweep_dir: str | Path | None = None, *, submit: str | None = None, progress: bool = True,
              ray_auth: str = "token", max_parallel: int | None = None, poll_s: float = 5.0,
              notify: Callable[[str], None] | None = None, redis_url: str | None = None) -> SweepResult:
    """Run every unfinished cell of a sweep, then write its report.

    Locally (``submit`` None) cells run one after another in this process; with ``submit`` = a Ray
    dashboard address each is a Ray job (at most ``max_parallel`` at a time; None = as many as the cluster's
    CPUs/GPUs hold for what a cell declares, see ``auto_parallel``), waited for.
    ``notify`` receives one line per cell started / skipped (default: logging). With ``redis_url`` (a
    `tether serve`'s Redis) each submitted cell is also a run of that service: its record (name = the cell
    id), metrics and commands, so the page and the API show it. Raises SweepSpecError
    before anything runs when any cell's config is invalid, AssetError when task assets are missing.
    """
    say = notify or log.info
    sweep = load_sweep(spec_path, sweep_dir)
    write_sweep_files(sweep)
    _check_assets(sweep.cells)
    statuses: dict[str, str] = {}
    todo = []
    for c in sweep.cells:
        if cell_state(c.dir) == "finished":
            statuses[c.id] = "skipped"
            say(f"== {c.id}: finished already, skipped")
        else:
            todo.append(c)
    bar = tqdm(total=len(sweep.cells), initial=len(statuses), desc=f"sweep {sweep.name}", unit="cell", disable=not progress)
    try:
        if submit is None:
            for c in todo:
                say(f"== {c.id}: {'resuming' if _has_checkpoint(c.dir) else 'starting'} in {c.dir}")
                statuses[c.id] = _run_local(c, progress=progress)
                bar.update(1)
        elif todo:
            from services.jobs import RayJobs

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
    from services.scheduler import run_resources

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


def _run_local(c: Cell, *, progress: bool) -> str:
    from actors.placement import RuntimeSetupError
    from learner.assets.store import AssetError

    try:
        return run_cell(c.dir, progress=progress)
    except (AssetError, RuntimeSetupError, SweepSpecError):
        raise  # the same for every cell: stop and say so
    except Exception:  # noqa: BLE001 - one broken cell must not lose the others; the traceback is logged
        log.exception("cell %s failed", c.id)
        return "failed"


def _register(redis_url: str, c: Cell, job_id: str) -> str:
    """A service run record for a submitted cell (state 'submitted'; the trainer reports the rest)."""
    from services.redis_store import RunStore
    from services.scheduler import run_resources

    run_id = f"sw-{uuid.uuid4().hex[:8]}"
    # `resources`: the service's admission counts what this cell holds on the cluster while its job runs
    RunStore(redis_url).create_run(run_id, {"name": c.id, "config": c.config.dump(), "job_id": job_id, "state": "submitted",
                                            "job_status": "PENDING", "sweep": c.id, "config_path": str((c.dir / "cell.yaml").resolve()),
                                            "resources": run_resources(c.config)})
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
            prev = _read_json(c.dir / "job.json").get("job_id")
            if prev and jobs.status(prev) in ("PENDING", "RUNNING"):
                say(f"== {c.id}: Ray job {prev} still running, waiting for it")
                running[prev] = c
                continue
            job_id = _safe(f"tether-sweep-{sweep_name}-{c.method}-{uuid.uuid4().hex[:8]}", allowed=r"A-Za-z0-9_-", limit=100)
            if _has_checkpoint(c.dir):
                resumed.add(c.id)
            run_id = _register(redis_url, c, job_id) if redis_url else None
            try:
                jobs.submit(cell_entrypoint(c.dir, run_id=run_id, redis_url=redis_url), job_id=job_id, env=job_env_vars())
            except Exception as e:  # noqa: BLE001 - reported with the address; jobs already submitted keep running
                if run_id:
                    from services.redis_store import RunStore

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
            ok = st == "SUCCEEDED" and cell_state(c.dir) == "finished"
            out[c.id] = ("resumed" if c.id in resumed else "ran") if ok else "failed"
            if not ok:
                try:
                    tail = jobs.logs(job_id)[-2000:]
                except Exception:  # noqa: BLE001 - logs are a courtesy
                    tail = "(no logs)"
                log.error("cell %s: Ray job %s ended %s, cell state %s; log tail:\n%s", c.id, job_id, st, cell_state(c.dir), tail)
            say(f"== {c.id}: Ray job {job_id} {st}")
            bar.update(1)
    return out


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# -- the report ---------------------------------------------------------------------------------------
def _stat(xs: list[float]) -> dict:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"mean": float(a.mean()) if a.size else None, "std": float(a.std(ddof=1)) if a.size > 1 else None, "n": int(a.size)}


def summarise(sweep_dir: str | Path) -> dict:
    """Numbers of the sweep report (= sweep_summary.json): per cell, per method x setting (mean, std, n over
    seeds of the final gold / proxy / KL / gap), and per method the RL-law fit on its pooled evaluations."""
    return _summarise(Path(sweep_dir))[0]


def _summarise(sweep_dir: Path) -> tuple[dict, dict]:
    from services.report import RLFit, eval_points, fit_rl_runs
    from services.runlog import read_metrics

    meta = _read_json(sweep_dir / "cells.json")
    if not meta.get("cells"):
        raise SweepSpecError(f"{sweep_dir} is not a sweep folder (no cells.json); run `tether sweep SPEC.yaml` first")
    cells, groups, points = {}, {}, {}
    for c in meta["cells"]:
        d = sweep_dir / c["dir"]
        s = _read_json(d / "summary.json")
        state = cell_state(d)
        final = None
        if state == "finished":
            final = {k: s.get(key) for k, key in FINAL_KEYS.items()}
            if final["gap"] is None and final["proxy"] is not None and final["gold"] is not None:
                final["gap"] = final["proxy"] - final["gold"]
        cells[c["id"]] = {"method": c["method"], "setting": c["setting"], "seed": c["seed"], "dir": c["dir"], "state": state, "final": final}
        g = groups.setdefault((c["method"], c["setting"]), {k: [] for k in FINAL_KEYS})
        for k in FINAL_KEYS:
            if final:
                g[k].append(final[k])
        kl, gold = eval_points(read_metrics(d))
        if len(kl):
            points.setdefault(c["method"], []).append((kl, gold))
    fits: dict[str, RLFit] = {m: fit_rl_runs(points.get(m, [])) for m in dict.fromkeys(c["method"] for c in meta["cells"])}
    summary = {
        "name": meta["spec"]["name"], "spec": meta["spec"], "cells": cells,
        "groups": [{"method": m, "setting": st, **{k: _stat(v) for k, v in g.items()}} for (m, st), g in groups.items()],
        "fits": {m: f.as_dict() for m, f in fits.items()},
    }
    return summary, fits


def _trajectory(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(KL, y) of every evaluation row; y = key, the gap falling back to proxy - gold in logs without it."""
    out = []
    for r in rows:
        kl, y = r.get("eval/kl_from_init_k3"), r.get(key)
        if y is None and key == "eval/proxy_gold_gap" and r.get("eval/proxy_mean") is not None and r.get("eval/gold_mean") is not None:
            y = r["eval/proxy_mean"] - r["eval/gold_mean"]
        if kl is not None and y is not None:
            out.append((kl, y))
    return out


def _plots(sweep_dir: Path, summary: dict, fits: dict) -> list[Path]:
    """Gold vs KL (trajectories, final points, each method's fitted law) and the proxy-gold gap vs KL.
    One colour per method, one marker shape per grid setting."""
    from services.report import COLORS, _save, draw_rl_fit, plt
    from services.runlog import read_metrics

    methods = list(summary["fits"])
    colour = {m: COLORS[i % len(COLORS)] for i, m in enumerate(methods)}
    settings = {m: list(dict.fromkeys(c["setting"] for c in summary["cells"].values() if c["method"] == m)) for m in methods}
    markers = "osD^vPX*<>"
    rows = {cid: read_metrics(sweep_dir / c["dir"]) for cid, c in summary["cells"].items()}
    out = []
    for key, ylabel, title, fname in (
        ("eval/gold_mean", "gold reward R* (held-out)", "gold vs KL from pi_0 (dashed: fitted RL law per method, Gao et al.)",
         "frontier_gold_vs_kl.png"),
        ("eval/proxy_gold_gap", "proxy - gold (held-out)", "proxy-gold gap vs KL (overoptimisation: a growing gap)", "gap_vs_kl.png"),
    ):
        fig, ax = plt.subplots(figsize=(7.4, 4.8))
        labelled = set()
        for cid, c in summary["cells"].items():
            pts = _trajectory(rows[cid], key)
            if not pts:
                continue
            m, col = c["method"], colour[c["method"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=col, lw=0.8, alpha=0.55)
            lab = f"{m} {c['setting']}" if len(settings[m]) > 1 else m
            ax.plot([pts[-1][0]], [pts[-1][1]], markers[settings[m].index(c["setting"]) % len(markers)], color=col, ms=7, mec="k", mew=0.5,
                    label=None if lab in labelled else lab)
            labelled.add(lab)
        if key == "eval/gold_mean":
            for m in methods:
                draw_rl_fit(ax, fits[m], colour[m], f"{m}: fitted RL law")
        ax.set_xlabel("KL(pi || pi_0), nats (held-out prompts)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=7)
        out.append(_save(fig, sweep_dir / fname))
    return out


def _cell(x: dict) -> str:
    if x["mean"] is None:
        return "-"
    return f"{x['mean']:+.3f}" + (f" &plusmn; {x['std']:.3f}" if x["std"] is not None else "")


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """report.html (+ frontier_gold_vs_kl.png, gap_vs_kl.png) and sweep_summary.json in the sweep folder."""
    import html

    from services.report import PAGE, _img, fit_table

    sweep_dir = Path(sweep_dir)
    summary, fits = _summarise(sweep_dir)
    plots = _plots(sweep_dir, summary, fits)
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2))
    head = "<tr><th>method</th><th>setting</th><th>seeds</th>" + "".join(f"<th>final {k} (mean &plusmn; std)</th>" for k in FINAL_KEYS) + "</tr>"
    rows = "".join(f"<tr><td>{html.escape(g['method'])}</td><td>{html.escape(g['setting'])}</td><td>{g['gold']['n']}</td>"
                   + "".join(f"<td>{_cell(g[k])}</td>" for k in FINAL_KEYS) + "</tr>" for g in summary["groups"])
    links = "".join(f'<li><a href="{html.escape(c["dir"])}/report.html">{html.escape(cid)}</a> ({html.escape(str(c["state"]))})</li>'
                    for cid, c in summary["cells"].items())
    spec = summary["spec"]
    body = (f"<p>base {html.escape(spec['base'])}; seeds {html.escape(str(spec['seeds']))}; final = the evaluation at the end of each "
            "finished cell; std over seeds (n = seeds finished). KL = eval/kl_from_init_k3.</p>"
            f"<h2>final results</h2><table>{head}{rows}</table>"
            + fit_table(fits, caption="Fitted RL scaling law per method (pooled over its cells)", what="method")
            + "".join(_img(p) for p in plots) + f"<h2>cells</h2><ul>{links}</ul>")
    page = sweep_dir / "report.html"
    page.write_text(PAGE.format(title=f"tether sweep: {html.escape(summary['name'])}", body=body))
    return page


def format_table(summary: dict) -> str:
    """The final table and the fits as plain text (the CLI prints it)."""
    def f(x: dict) -> str:
        return "-" if x["mean"] is None else f"{x['mean']:+.3f}" + (f"±{x['std']:.3f}" if x["std"] is not None else "")

    lines = [f"{'method':<16} {'setting':<24} {'n':>2} {'gold':>14} {'proxy':>14} {'KL':>14} {'gap':>14}"]
    for g in summary["groups"]:
        lines.append(f"{g['method']:<16} {g['setting']:<24} {g['gold']['n']:>2} " + " ".join(f"{f(g[k]):>14}" for k in FINAL_KEYS))
    lines.append(f"{'fit (Gao RL)':<16} {'alpha':>8} {'beta':>8} {'R^2':>6} {'peak KL':>8} {'points':>6}")
    for m, fit in summary["fits"].items():
        if "error" in fit:
            lines.append(f"{m:<16} no fit: {fit['error']}")
        else:
            n = lambda v, spec=".4f": "-" if v is None else format(v, spec)  # noqa: E731
            lines.append(f"{m:<16} {n(fit['alpha']):>8} {n(fit['beta']):>8} {n(fit['r2'], '.3f'):>6} {n(fit['peak_kl'], '.4g'):>8} "
                         f"{fit['n_points']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.sweep run-cell DIR``: the entrypoint of one cell's Ray job."""
    p = argparse.ArgumentParser(prog="python -m services.sweep", description="run one cell of a tether sweep (the Ray job entrypoint)")
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


if __name__ == "__main__":
    sys.exit(main())
