"""Artefact cache: each stage lives in its own folder keyed by a hash of the config that made it.

Every folder holds ``tether_manifest.json`` (how it was made, its quality figures); the task folder
holds ``manifest.json`` indexing all stages. A stage is rebuilt only when its key changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

MANIFEST = "tether_manifest.json"
# Bump a stage's version when its build code changes in a way that changes the artefact.
STAGE_VERSIONS = {"policy": 1, "gold": 1, "proxy": 3, "sft": 1, "prompts": 1, "dataset_proxy": 1}


class AssetError(RuntimeError):
    """A missing, corrupt or mismatched artefact. The message says which and how to rebuild it."""


def stage_key(stage: str, parts: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "v": STAGE_VERSIONS[stage], **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_manifest(folder: Path) -> dict | None:
    f = folder / MANIFEST
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_manifest(folder: Path, stage: str, key: str, parts: dict, metrics: dict, seconds: float) -> dict:
    m = {
        "stage": stage,
        "key": key,
        "config": parts,
        "metrics": metrics,
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (folder / MANIFEST).write_text(json.dumps(m, indent=2, default=str))
    return m


def check_artefact(folder: Path, stage: str, key: str, required: list[str], rebuild_hint: str) -> dict:
    """Return the manifest of a usable artefact, or raise AssetError naming what is wrong."""
    if not folder.exists():
        raise AssetError(f"{stage} artefact missing at {folder}; build it with: {rebuild_hint}")
    m = read_manifest(folder)
    if m is None:
        raise AssetError(f"{stage} artefact at {folder} has no readable {MANIFEST} (corrupt or interrupted build); rebuild with: {rebuild_hint} --rebuild")
    if m.get("key") != key:
        raise AssetError(
            f"{stage} artefact at {folder} was built with a different config (key {m.get('key')}, this config needs {key}); rebuild with: {rebuild_hint}"
        )
    missing = [r for r in required if not (folder / r).exists()]
    if missing:
        raise AssetError(f"{stage} artefact at {folder} is incomplete (missing {', '.join(missing)}); rebuild with: {rebuild_hint} --rebuild")
    return m


def fresh_dir(folder: Path) -> Path:
    """An empty temporary sibling folder to build into; `commit_dir` moves it in place atomically."""
    tmp = folder.with_name(folder.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def update_index(task_dir: Path, stage: str, manifest: dict, folder: Path) -> None:
    idx_path = task_dir / "manifest.json"
    idx = json.loads(idx_path.read_text()) if idx_path.exists() else {}
    idx[stage] = {**manifest, "path": str(folder)}
    idx_path.write_text(json.dumps(idx, indent=2, default=str))


def reuse(folder: Path, stage: str, key: str, required: list[str]) -> dict | None:
    """The manifest of an up-to-date artefact at ``folder``, or None when it must be (re)built."""
    try:
        m = check_artefact(folder, stage, key, required, "")
    except AssetError:
        return None
    log.info("%s: up to date (%s)", stage, folder)
    return m


def build_stage(folder: Path, stage: str, key: str, parts: dict, required: list[str], build: Callable[[Path], dict], *,
                rebuild: bool, index_dir: Path) -> dict:
    """Every task's stage: reuse an up-to-date artefact, or run ``build(tmp_dir) -> metrics`` in a fresh sibling folder and
    commit it with its manifest (a stage exists whole or not at all) and its line in ``index_dir``'s manifest.json."""
    if not rebuild and (m := reuse(folder, stage, key, required)) is not None:
        return m
    t0 = time.time()
    tmp = fresh_dir(folder)
    metrics = build(tmp)
    m = write_manifest(tmp, stage, key, parts, metrics, time.time() - t0)
    commit_dir(tmp, folder)
    update_index(index_dir, stage, m, folder)
    return m
