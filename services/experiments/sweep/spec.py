"""Sweep specs: parse and validate a spec (methods x grids x seeds) into cells, and write the sweep folder's files.

The spec format is in services/experiments/sweep/__init__.py."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from learner.config import PRESETS_DIR, ConfigError, TetherConfig, compose_dict, nest, read_config_file, validate_dict

log = logging.getLogger(__name__)

SPEC_KEYS = ("name", "base", "set", "seeds", "methods")
METHOD_KEYS = ("config", "grid")
RESERVED = {"name": "cell names are derived from the sweep's name", "variants": "a sweep's methods take the place of variants",
            "train.seed": "list seeds under `seeds:`"}
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,47}$")

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


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float, str)):
        return repr(v) if isinstance(v, float) else str(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def safe_name(s: str, *, allowed: str = r"A-Za-z0-9._=,+-", limit: int = 100) -> str:
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
    mconf = nest(mconf)  # its fields are checked by the schema, per cell
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


def load_sweep(spec_path: str | Path, sweep_dir: str | Path | None = None, *, seeds: list[int] | None = None) -> Sweep:
    """Parse a spec and build (and validate) every cell; nothing is written. ``seeds``: instead of the spec's (e.g.
    `tether reproduce --seeds 5`; the cells of seeds both list are the same cells). Raises SweepSpecError, naming
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
    name = str(spec.get("name") or safe_name(spec_path.stem, allowed=r"A-Za-z0-9_.-", limit=48))
    if not NAME_RE.match(name):
        raise SweepSpecError(f"{where}: name {name!r} must be 1-48 letters, digits, '_', '.', '-' (not starting with '.' or '-')")
    base, base_path = _load_base(spec.get("base"), spec_path)
    overrides = _mapping(spec.get("set"), f"{where}: 'set'", "dotted config field -> value, e.g. {train.iterations: 12}")
    for k in overrides:
        _check_field(str(k), f"{where}: 'set'")
    seeds = _seeds(spec.get("seeds") if seeds is None else list(seeds), where)
    methods = _mapping(spec.get("methods"), f"{where}: 'methods'", "method name -> {config: ..., grid: ...}")
    if not methods:
        raise SweepSpecError(f"{where}: 'methods' is empty; give at least one method, e.g. methods: {{ppo_kl: {{config: {{kl: {{coef: 0.05}}}}}}}}")
    resolved = {m: dict(zip(("config", "grid"), _method(m, body, f"{where}: method '{m}'", seeds=seeds))) for m, body in methods.items()}
    set_nested = nest(overrides)
    if sweep_dir is None:
        sweep_dir = Path(compose_dict(base, set_nested).get("runs_dir", "runs")) / f"sweep-{name}"
    root = Path(sweep_dir)

    cells: list[Cell] = []
    errors: list[str] = []
    for mname, m in resolved.items():
        for combo in itertools.product(*m["grid"].values()):
            values = dict(zip(m["grid"], combo))
            setting = ",".join(f"{k}={_fmt(v)}" for k, v in values.items()) or "default"
            gnested = nest(values)
            for seed in seeds if seeds is not None else [None]:
                # composed as every config is (learner.config.compose): a layer that switches algorithm drops the base's
                # sections of the other algorithms, as a variant does
                merged = compose_dict(base, set_nested, m["config"], gnested, {} if seed is None else {"train": {"seed": seed}})
                if isinstance(merged.get("data_dir", "data"), str):  # cells may run anywhere (a Ray job's working directory is not ours)
                    merged["data_dir"] = str(Path(merged.get("data_dir", "data")).resolve())
                train = merged.get("train")
                s = seed if seed is not None else (train.get("seed", 0) if isinstance(train, dict) else 0)
                cid = f"{mname}/{setting}/seed-{s}"
                merged["name"] = _cell_name(name, mname, setting, s)
                try:
                    cells.append(Cell(cid, mname, setting, s, values, root / mname / safe_name(setting) / f"seed-{s}",
                                      validate_dict(merged, source=f"cell '{cid}'")))
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
    return safe_name(f"{sweep}-{method}-{setting}-s{seed}".replace("=", "").replace(",", "_"), allowed=r"A-Za-z0-9_.-", limit=64)


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


# -- the report ---------------------------------------------------------------------------------------
