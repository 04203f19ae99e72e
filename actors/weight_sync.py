"""Learner -> rollout-engine weight sync: one small interface, backends chosen by name.

Shaped like veRL's ``checkpoint_engine/base.py`` (``send_weights(iterable of (name, tensor))`` /
``receive_weights()``)::

    sync = make_weight_sync("tmpfs", run_id="exp1")
    handle = sync.send(policy.state_dict().items(), version=7)   # learner side
    state_dict, version = sync.receive(handle)                   # e.g. TransformersEngine.load_weights
    path, version = sync.receive_file(handle)                    # VLLMEngine: its workers map the file and reload from views

Backends:
  tmpfs         safetensors files in /dev/shm/tether-<run_id>/slot<k>/, k = 0 .. keep-1 in turn, made once and
                then rewritten in place through a mapping (one copy per tensor a sync); the handle is
                {"file", "version"}. Same machine only: a tmpfs file is not shared across nodes.
                close() removes the folder; a folder whose writer died without close() (SIGKILL, OOM)
                is removed by the next TmpfsWeightSync made on that machine (collect_stale).
  object_store  ``ray.put`` of the tensors as numpy arrays; the handle is the ObjectRef. Works across
                nodes; a vLLM receiver writes what it got into its own local tmpfs file, then reloads.

Why files are written in place (bench/run_all.py section 2, 135M-parameter Llama, 2 cores): a fresh 621 MiB
safetensors file in /dev/shm took 340 ms to write (the kernel allocates and zeroes every page), 6x a memcpy of the
same bytes (56 ms); a page of a file that stays mapped is written at memcpy speed.

Tied embeddings: a tied model's ``lm_head.weight`` is the embedding tensor, and vLLM's in-place reload left
the output layer stale when only the embedding was sent (docs/cpu-notes.md: greedy outputs differed from
transformers on 8/8 prompts). So every backend sends ``lm_head.weight`` as its own entry (added when the
sender omitted it): tmpfs writes the embedding's bytes a second time under that name (sync_tensors); the
object store clones it and any other tensor sharing storage with one already sent (prepare_tensors).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import contextmanager
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
    from learner.parallel import full

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in named_tensors:
        t = full(t).detach()  # a sharded (fsdp2) or lazily merged tensor made whole, one at a time
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
    # Every send touches its slot's file (TensorFile.write), so a live writer keeps this recent.
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


def sync_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """(name, detached contiguous tensor) in send order, on their device, a tied output layer added as the embedding tensor
    itself: TensorFile copies bytes, so nothing here needs a private copy."""
    out = [(n, t.detach() if t.is_contiguous() else t.detach().contiguous()) for n, t in named_tensors]
    names = dict(out)
    for emb, head in TIED_OUTPUT.items():
        if emb in names and head not in names:
            out.append((head, names[emb]))
    return out


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
           torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_BY_NAME = {v: k for k, v in _DTYPES.items()}
SEQ_KEY = "tether_write_seq"  # odd while a write is under way
_FIELD = 20  # digits of the header's version and sequence numbers: fixed, so that a write never moves the data
Spec = list[tuple[str, torch.dtype, tuple[int, ...]]]


def _num(x: int) -> str:
    return f"{int(x):0{_FIELD}d}" if x >= 0 else "-" + f"{-int(x):0{_FIELD - 1}d}"


def _read_header(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header length)")
        n = int.from_bytes(raw, "little")
        if n > 100 * 2**20:
            raise ValueError(f"{path}: a safetensors header of {n} bytes (corrupt file?)")
        return n, json.loads(fh.read(n))


def read_version(path: str | Path) -> tuple[int | None, int | None]:
    """(write sequence, policy version) in a weights file's header; None for a field it lacks (a file from save_file)."""
    _, header = _read_header(Path(path))
    meta = header.get("__metadata__") or {}
    return (int(meta[SEQ_KEY]) if SEQ_KEY in meta else None), (int(meta[VERSION_KEY]) if VERSION_KEY in meta else None)


class TensorFile:
    """One safetensors file mapped into memory: every tensor a view of the mapping. ``create`` (the sender) lays it out and
    maps it writable; ``open`` (a receiver) maps it read-only. Any safetensors file opens; only ours carry the write
    sequence that ``reading`` checks."""

    def __init__(self, path: Path, fd: int, writable: bool):
        import mmap

        self.path, self.pending = path, None
        self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        st = os.fstat(fd)
        self._id = (st.st_ino, st.st_size)
        n = int.from_bytes(self._mm[:8], "little")
        raw = bytes(self._mm[8 : 8 + n])
        header = json.loads(raw)
        meta = header.pop("__metadata__", None) or {}
        self._pos = {k: raw.find(f'"{k}":"'.encode()) + len(k) + 4 + 8 for k in (VERSION_KEY, SEQ_KEY) if k in meta}
        with warnings.catch_warnings():  # a read-only mapping: torch warns that the buffer is not writable (it is only read)
            warnings.simplefilter("ignore", UserWarning)
            buf = torch.frombuffer(self._mm, dtype=torch.uint8)
        self.buffer = buf  # every view lies in it
        base, self.spec, self._views = 8 + n, [], {}
        for name, e in header.items():
            if e["dtype"] not in _BY_NAME:
                raise ValueError(f"{path}: tensor {name!r} has dtype {e['dtype']}; accepted: {', '.join(_BY_NAME)}")
            dtype, (a, b) = _BY_NAME[e["dtype"]], e["data_offsets"]
            self._views[name] = buf[base + a : base + b].view(dtype).view(e["shape"])
            self.spec.append((name, dtype, tuple(e["shape"])))

    # -- the sender's side ---------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, spec: Spec) -> "TensorFile":
        """A new file laid out for ``spec`` beside ``path`` (renamed onto it by the first write). Tensors are stored
        largest element first, so each starts aligned to its element size; the send order is kept in the header."""
        for name, dtype, _ in spec:
            if dtype not in _DTYPES:
                raise ValueError(f"weight {name!r} has dtype {dtype}; the tmpfs sync accepts {', '.join(map(str, _DTYPES))}")
        order = sorted(range(len(spec)), key=lambda i: -torch.empty((), dtype=spec[i][1]).element_size())
        offsets, off = {}, 0
        for i in order:
            name, dtype, shape = spec[i]
            n = torch.empty((), dtype=dtype).element_size()
            for d in shape:
                n *= int(d)
            offsets[name], off = (off, off + n), off + n
        header: dict[str, Any] = {"__metadata__": {"format": "pt", VERSION_KEY: _num(-1), SEQ_KEY: _num(0)}}
        for name, dtype, shape in spec:
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": list(offsets[name])}
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)  # the data starts 8-aligned (as safetensors' own writer pads)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(len(h).to_bytes(8, "little") + h)
            fh.truncate(8 + len(h) + max(off, 1))
        fd = os.open(tmp, os.O_RDWR)
        try:
            f = cls(tmp, fd, writable=True)
        finally:
            os.close(fd)
        f.pending = path
        return f

    def same_file(self, path: Path) -> bool:
        """Whether ``path`` is still the file this object maps (not replaced, not removed)."""
        try:
            st = os.stat(self.pending or path)
        except OSError:
            return False
        return (st.st_ino, st.st_size) == self._id

    def _field(self, key: str) -> int:
        p = self._pos[key]
        return int(bytes(self._mm[p : p + _FIELD]))

    def _set(self, key: str, value: int) -> None:
        p = self._pos[key]
        self._mm[p : p + _FIELD] = _num(value).encode()

    def write(self, tensors: list[tuple[str, torch.Tensor]], version: int) -> None:
        """Copy every tensor into its place (a device tensor goes straight from the device; a sharded one is gathered first,
        one at a time) and stamp ``version``."""
        from learner.parallel import full

        seq = self._field(SEQ_KEY) + 1
        self._set(SEQ_KEY, seq)  # odd: a reader that overlaps this write sees it
        for name, t in tensors:
            self._views[name].copy_(full(t))
        self._set(VERSION_KEY, version)
        self._set(SEQ_KEY, seq + 1)
        if self.pending is not None:
            os.replace(self.path, self.pending)
            self.path, self.pending = self.pending, None
        else:
            os.utime(self.path)  # collect_stale reads a live folder's age from its files

    # -- a receiver's side -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "TensorFile":
        fd = os.open(path, os.O_RDONLY)
        try:
            return cls(Path(path), fd, writable=False)
        finally:
            os.close(fd)

    def views(self) -> dict[str, torch.Tensor]:
        return dict(self._views)

    def state(self) -> tuple[int | None, int | None]:
        return (self._field(SEQ_KEY) if SEQ_KEY in self._pos else None), (self._field(VERSION_KEY) if VERSION_KEY in self._pos else None)

    @contextmanager
    def reading(self, version: int | None = None):
        """The views, fenced: fails unless the file holds ``version`` (when given) and no write began or ended meanwhile."""
        seq, held = self.state()
        if seq is not None and seq % 2:
            raise RuntimeError(f"{self.path} is being written (sequence {seq}); read it after the sender's send returns")
        if version is not None and held is not None and held != version:
            raise RuntimeError(f"{self.path} holds version {held}, not {version}")
        yield self.views()
        if self.state()[0] != seq:
            raise RuntimeError(f"{self.path} was rewritten while it was being read (sequence {seq} -> {self.state()[0]}): "
                               "the weights read may be torn; send again")

    def check(self, version: int) -> None:
        with self.reading(version):
            pass

    def close(self) -> None:
        self._views.clear()
        try:
            self._mm.close()
        except BufferError:  # a view is still held somewhere: the mapping goes when it does
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_MAPPED: dict[str, TensorFile] = {}


def mapped(path: str | Path) -> TensorFile:
    """This process's read-only mapping of a weights file, kept across calls (a tmpfs slot is rewritten in place, so its
    pages stay mapped and a reload reads them at memory speed); made again when the file was replaced."""
    key = str(path)
    for k, old in list(_MAPPED.items()):  # a removed or replaced file's pages stay allocated while mapped: let them go
        if not old.same_file(Path(k)):
            old.close()
            del _MAPPED[k]
    if key not in _MAPPED:
        _MAPPED[key] = TensorFile.open(path)
    return _MAPPED[key]


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
    def receive_file(self, handle: Any) -> tuple[Path, int]:
        """(local safetensors file, version): what a vLLM engine's workers map and reload from (TensorFile)."""

    def close(self) -> None:
        """Free what this side wrote (folders); the default has nothing to free."""


class TmpfsWeightSync(WeightSync):
    """Safetensors files in RAM, written in place: <root>/tether-<run_id>/slot<k>/model.safetensors, k = 0 .. keep-1 in turn.

    A slot's file is made once per layout (names, dtypes, shapes) and stays mapped in the sender: each later send is one
    copy per tensor into the mapping, with no new file, no serialisation and no clone of a tied output layer. A receiver
    maps the file once too (TensorFile) and reads every tensor as a view of it. A write is fenced by a sequence number
    in the header (odd while writing), so a reader that raced a writer fails loudly instead of loading torn weights.
    The handle is {"file", "version"}; a handle whose slot has since been rewritten fails with the version it now holds.
    """

    name = "tmpfs"

    def __init__(self, *, run_id: str = "default", root: str | Path | None = None, keep: int = 2):
        if not _RUN_ID.match(run_id):
            raise ValueError(f"weight sync run_id {run_id!r} must be 1-100 letters, digits, '_', '.' or '-'")
        if keep < 1:
            raise ValueError(f"weight sync keep ({keep}) must be >= 1")
        self.run_id, self.keep = run_id, keep
        self.root = Path(root) if root is not None else default_root()
        self.folder = self.root / f"tether-{run_id}"
        self._slots: dict[int, TensorFile] = {}  # slot -> this sender's mapping of its file
        self._next = 0
        # close() never runs in a process killed by SIGKILL: its folders are collected here instead.
        collect_stale(self.root)

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> dict[str, Any]:
        tensors = sync_tensors(named_tensors)
        spec = [(n, t.dtype, tuple(t.shape)) for n, t in tensors]
        if not (self.folder / OWNER_FILE).exists():
            self._claim()
        slot, self._next = self._next, (self._next + 1) % self.keep
        path = self.folder / f"slot{slot}" / WEIGHTS_FILE
        f = self._slots.get(slot)
        if f is None or f.spec != spec or not f.same_file(path):
            if f is not None:
                f.close()
            f = self._slots[slot] = TensorFile.create(path, spec)  # written beside, then renamed: never seen half-made
        f.write(tensors, int(version))
        return {"file": str(path), "version": int(version)}

    def _claim(self) -> None:
        """Make the folder and record this process as its owner, so that collect_stale can tell when it is orphaned."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{OWNER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(owner_record()))
        os.replace(tmp, self.folder / OWNER_FILE)  # never a half-written owner.json

    def versions(self) -> list[int]:
        """Versions the slots now hold, oldest first."""
        out = []
        for p in sorted(self.folder.glob(f"slot*/{WEIGHTS_FILE}")) if self.folder.is_dir() else []:
            try:
                out.append(read_version(p)[1])
            except (OSError, ValueError):
                continue
        return sorted(v for v in out if v is not None)

    def receive_file(self, handle: dict[str, Any]) -> tuple[Path, int]:
        path, want = _handle(handle)
        if not path.is_file():
            raise FileNotFoundError(f"no weights file {path} (closed? the sender keeps the last {self.keep} versions)")
        _, got = read_version(path)
        if got != want:
            raise FileNotFoundError(f"{path} now holds version {got}, not {want}: the sender keeps the last {self.keep} versions")
        return path, want

    def receive(self, handle: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
        path, version = self.receive_file(handle)
        with mapped(path).reading(version) as views:
            tensors = {k: v.clone() for k, v in views.items()}  # private copies: the slot is rewritten two sends on
        return tensors, version

    def close(self) -> None:
        for f in self._slots.values():
            f.close()
        self._slots.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _handle(handle) -> tuple[Path, int]:
    if isinstance(handle, dict) and "file" in handle and "version" in handle:
        return Path(handle["file"]), int(handle["version"])
    raise TypeError(f"a tmpfs weight handle is {{'file': path, 'version': int}} as send() returns it, got {handle!r}")


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

    def receive_file(self, handle) -> tuple[Path, int]:
        state_dict, version = self.receive(handle)
        if self._local is None:
            # Per process: several engines on one node must not write the same folder.
            self._local = TmpfsWeightSync(run_id=f"{self.run_id}-recv{os.getpid()}", root=self.root, keep=self.keep)
        return self._local.receive_file(self._local.send(state_dict.items(), version))

    def close(self) -> None:
        if self._local is not None:
            self._local.close()


BACKENDS: dict[str, type[WeightSync]] = {"tmpfs": TmpfsWeightSync, "object_store": ObjectStoreWeightSync}


def make_weight_sync(name: str, **kw) -> WeightSync:
    """A backend by name: 'tmpfs' (same machine) or 'object_store' (Ray, multi-node)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown weight-sync backend {name!r}; accepted: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](**kw)
