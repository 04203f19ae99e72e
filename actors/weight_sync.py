"""Learner -> rollout-engine weight sync: one small interface, backends chosen by name.

Shaped like veRL's ``checkpoint_engine/base.py`` (``send_weights(iterable of (name, tensor))`` /
``receive_weights()``)::

    sync = make_weight_sync("tmpfs", run_id="exp1")
    handle = sync.send(policy.state_dict().items(), version=7)   # learner side
    state_dict, version = sync.receive(handle)                   # e.g. TransformersEngine.load_weights
    folder, version = sync.receive_folder(handle)                # VLLMEngine: its reload reads a folder

Backends:
  tmpfs         one safetensors file per version under /dev/shm/tether-<run_id>/v<version>/; the
                handle is that folder (a str). Same machine only: a tmpfs file is not shared across nodes.
                close() removes the folder; a folder whose writer died without close() (SIGKILL, OOM)
                is removed by the next TmpfsWeightSync made on that machine (collect_stale).
  object_store  ``ray.put`` of the tensors as numpy arrays; the handle is the ObjectRef. Works across
                nodes; a vLLM receiver writes what it got into its own local tmpfs folder, then reloads.

Tied embeddings: a tied model's ``lm_head.weight`` is the embedding tensor. safetensors refuses tensors
that share memory, and vLLM's in-place reload left the output layer stale when only the embedding was
sent (docs/cpu-notes.md: greedy outputs differed from transformers on 8/8 prompts). So every
backend sends ``lm_head.weight`` as its own clone (added when the sender omitted it), and clones any
other tensor that shares storage with one already sent.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
VERSION_KEY = "tether_policy_version"
# Embedding -> output-layer names of tied models (Llama-style, GPT-2-style).
TIED_OUTPUT = {"model.embed_tokens.weight": "lm_head.weight", "transformer.wte.weight": "lm_head.weight"}
_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
OWNER_FILE = "owner.json"
# A folder without owner.json (written before owners were recorded, or by a writer that died between
# mkdir and the owner file) is only removed once nothing has changed in it for this long.
UNOWNED_MAX_AGE_S = 3600.0


def prepare_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, no two sharing storage; a tied output layer made explicit."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in named_tensors:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    for emb, head in TIED_OUTPUT.items():
        if emb in out and head not in out:
            out[head] = out[emb].clone()
    return out


def default_root() -> Path:
    """/dev/shm (RAM-backed, so a sync never touches disk) or, where it is missing, the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def process_start_time(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot (/proc/<pid>/stat field 22), None when it is gone.

    pid + start time names one process for good: a pid reused after the owner died has another start time.
    A zombie counts as gone: it holds its pid but will never clean up.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and ')'
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # fields[0] is field 3 (state), fields[19] field 22
        return None
    return int(fields[19])


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def owner_record(pid: int | None = None) -> dict[str, Any]:
    """What owner.json holds: the writing process (this one by default), its start time and pid namespace."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start_time": process_start_time(pid), "pid_ns": _pid_namespace()}


def _owner_gone(owner: dict[str, Any]) -> bool:
    if owner.get("pid_ns") != _pid_namespace():
        # Another container sharing /dev/shm (e.g. docker --ipc=host): its pids mean nothing here.
        return False
    start = process_start_time(int(owner["pid"]))
    return start is None or start != owner.get("start_time")


def _last_change(folder: Path) -> float:
    # Every send adds a v<version> folder, so a live writer keeps this recent.
    return max([folder.stat().st_mtime, *(p.lstat().st_mtime for p in folder.iterdir())])


def collect_stale(root: str | Path, *, unowned_max_age_s: float = UNOWNED_MAX_AGE_S) -> list[Path]:
    """Remove the tether-* weight folders under `root` left by processes that died without close();
    returns the folders removed.

    A folder goes when its owner.json names a process that is gone (no such pid, or a pid reused by a
    process with another start time), or when it has no readable owner.json and has not changed for
    `unowned_max_age_s`. A folder whose owner is alive, or is in another pid namespace, is kept.
    """
    removed: list[Path] = []
    if process_start_time(os.getpid()) is None:  # no /proc (not Linux): no way to tell a dead owner from a live one
        return removed
    try:
        folders = [p for p in Path(root).glob("tether-*") if p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    for folder in folders:
        try:
            try:
                stale = _owner_gone(json.loads((folder / OWNER_FILE).read_text()))
            except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):  # no owner.json, or not ours
                stale = time.time() - _last_change(folder) > unowned_max_age_s
        except OSError:  # removed meanwhile, or another user's folder: not ours to judge
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    if removed:
        log.info("removed %d weight-sync folder(s) left by dead processes: %s", len(removed), ", ".join(map(str, removed)))
    return removed


class WeightSync(ABC):
    """Send a learner's weights under a policy version; receive them on a rollout engine."""

    name: str

    @abstractmethod
    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> Any:
        """Publish the weights as `version`; returns a small picklable handle for the receivers."""

    @abstractmethod
    def receive(self, handle: Any) -> tuple[dict[str, torch.Tensor], int]:
        """(state dict of CPU tensors, version) for a handle from `send`."""

    @abstractmethod
    def receive_folder(self, handle: Any) -> tuple[Path, int]:
        """(local folder holding model.safetensors, version): what vLLM's `reload_weights` reads."""

    def close(self) -> None:
        """Free what this side wrote (folders); the default has nothing to free."""


class TmpfsWeightSync(WeightSync):
    """Safetensors in a RAM-backed folder per version: <root>/tether-<run_id>/v<version>/model.safetensors."""

    name = "tmpfs"

    def __init__(self, *, run_id: str = "default", root: str | Path | None = None, keep: int = 2):
        if not _RUN_ID.match(run_id):
            raise ValueError(f"weight sync run_id {run_id!r} must be 1-100 letters, digits, '_', '.' or '-'")
        if keep < 1:
            raise ValueError(f"weight sync keep ({keep}) must be >= 1")
        self.run_id, self.keep = run_id, keep
        self.root = Path(root) if root is not None else default_root()
        self.folder = self.root / f"tether-{run_id}"
        # close() never runs in a process killed by SIGKILL: its folders are collected here instead.
        collect_stale(self.root)

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> str:
        from safetensors.torch import save_file

        tensors = prepare_tensors(named_tensors)
        if not (self.folder / OWNER_FILE).exists():
            self._claim()
        final = self.folder / f"v{int(version)}"
        # Write beside, then rename: a receiver never sees a half-written file.
        tmp = self.folder / f".v{int(version)}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", VERSION_KEY: str(int(version))})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._clean()
        return str(final)

    def _claim(self) -> None:
        """Make the folder and record this process as its owner, so that collect_stale can tell when it is orphaned."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{OWNER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(owner_record()))
        os.replace(tmp, self.folder / OWNER_FILE)  # never a half-written owner.json

    def versions(self) -> list[int]:
        """Versions currently on disk, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in self.folder.iterdir() if re.fullmatch(r"v\d+", p.name))

    def _clean(self) -> None:
        # Keep the newest `keep` versions: an engine may still be reading the previous one.
        for v in self.versions()[: -self.keep]:
            shutil.rmtree(self.folder / f"v{v}", ignore_errors=True)

    def receive_folder(self, handle: str | Path) -> tuple[Path, int]:
        from safetensors import safe_open

        folder = Path(handle)
        f = folder / WEIGHTS_FILE
        if not f.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder} (already cleaned? the sender keeps the last {self.keep} versions)")
        with safe_open(str(f), framework="pt") as st:
            meta = st.metadata() or {}
        return folder, int(meta[VERSION_KEY]) if VERSION_KEY in meta else int(folder.name.lstrip("v"))

    def receive(self, handle: str | Path) -> tuple[dict[str, torch.Tensor], int]:
        from safetensors.torch import load_file

        folder, version = self.receive_folder(handle)
        return load_file(str(folder / WEIGHTS_FILE)), version

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class ObjectStoreWeightSync(WeightSync):
    """The Ray object store: works across nodes. The handle is an ObjectRef of {version, tensors}.

    Passed as a top-level argument to a remote method, Ray resolves an ObjectRef to its value before the
    call; `receive` accepts either form. Tensors travel as numpy arrays, which Ray reads zero-copy from
    shared memory on the receiving node (bfloat16, which numpy lacks, travels as its int16 bits).
    """

    name = "object_store"

    def __init__(self, *, run_id: str = "default", root: str | Path | None = None, keep: int = 2):
        if not _RUN_ID.match(run_id):
            raise ValueError(f"weight sync run_id {run_id!r} must be 1-100 letters, digits, '_', '.' or '-'")
        self.run_id, self.root, self.keep = run_id, root, keep
        self._local: TmpfsWeightSync | None = None  # made on the receiving side, per process

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int):
        import ray

        arrays, dtypes = {}, {}
        for name, t in prepare_tensors(named_tensors).items():
            if t.dtype == torch.bfloat16:
                arrays[name], dtypes[name] = t.view(torch.int16).numpy(), "bfloat16"
            else:
                arrays[name] = t.numpy()
        return ray.put({"version": int(version), "tensors": arrays, "dtypes": dtypes})  # put once, not per tensor (Ray hygiene)

    def receive(self, handle) -> tuple[dict[str, torch.Tensor], int]:
        import ray

        payload = ray.get(handle) if isinstance(handle, ray.ObjectRef) else handle
        out = {}
        for name, arr in payload["tensors"].items():
            t = torch.from_numpy(arr.copy())  # the arrays are read-only views into the object store
            if payload["dtypes"].get(name) == "bfloat16":
                t = t.view(torch.bfloat16)
            out[name] = t
        return out, int(payload["version"])

    def receive_folder(self, handle) -> tuple[Path, int]:
        state_dict, version = self.receive(handle)
        if self._local is None:
            # Per process: several engines on one node must not write the same folder.
            self._local = TmpfsWeightSync(run_id=f"{self.run_id}-recv{os.getpid()}", root=self.root, keep=self.keep)
        return Path(self._local.send(state_dict.items(), version)), version

    def close(self) -> None:
        if self._local is not None:
            self._local.close()


BACKENDS: dict[str, type[WeightSync]] = {"tmpfs": TmpfsWeightSync, "object_store": ObjectStoreWeightSync}


def make_weight_sync(name: str, **kw) -> WeightSync:
    """A backend by name: 'tmpfs' (same machine) or 'object_store' (Ray, multi-node)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown weight-sync backend {name!r}; accepted: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](**kw)
