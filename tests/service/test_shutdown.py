"""Stopping tether processes leaves nothing running and nothing in /dev/shm.

`tether serve` stopped by SIGTERM or SIGINT stops the valkey server it started; `tether train` stopped by
SIGTERM removes its tmpfs weight folders and its vLLM shared memory; the weight folders of a SIGKILLed run are collected by the next
TmpfsWeightSync on the machine (actors.weight_sync.collect_stale, unit-tested here on a temporary root).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from actors.weight_sync import OWNER_FILE, TmpfsWeightSync, collect_stale, default_root, owner_record, process_start_time
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
TETHER = Path(sys.executable).with_name("tether")


# -- helpers -----------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("TETHER_REDIS_URL", "RAY_ADDRESS"):  # an embedded Redis, a local Ray cluster of its own
        env.pop(k, None)
    return env


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "X")
    return state in ("Z", "X")


def _session_pids(sid: int) -> list[int]:
    """Live processes of session `sid`: a subprocess started with start_new_session=True and all it started."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):  # fields[3] is field 6, the session id
            out.append(int(d.name))
    return out


def _shared_memory_of(sid: int) -> set[Path]:
    """The /dev/shm/psm_* blocks (vLLM's message queues, ~400 MB per engine) mapped by the processes of session `sid`."""
    out: set[Path] = set()
    for pid in _session_pids(sid):
        with suppress(OSError):
            out.update(Path(m) for m in re.findall(r"/dev/shm/psm_\w+", Path(f"/proc/{pid}/maps").read_text()))
    return out


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the process group we started, then any process of its session that left the group."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 60
    while (left := _session_pids(proc.pid)) and time.time() < deadline:
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not left, f"processes of the killed run still alive: {left}"


@contextmanager
def _session(cmd: list[str], log_path: Path):
    """`cmd` in a new session, output to log_path; whatever of it is still running at the end is killed."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            _kill_session(proc)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


# -- tether serve --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_its_embedded_valkey_on_signal(sig, tmp_path):
    port, data, log = _free_port(), tmp_path / "service", tmp_path / "serve.log"
    with _session([str(TETHER), "serve", "--no-ray", "--port", str(port), "--data-dir", str(data)], log) as proc:
        wait_for(lambda: proc.poll() is not None or _healthy(port), timeout=120, what="GET /healthz of tether serve")
        assert proc.poll() is None, _tail(log)
        valkey = json.loads((data / "redis" / "server.json").read_text())["pid"]
        assert valkey and not _gone(valkey)
        os.kill(proc.pid, sig)  # the server process only (as `kill`, or a supervisor): valkey must be stopped by it
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tether serve still running 20 s after {sig.name}:\n{_tail(log)}")
        wait_for(lambda: _gone(valkey), timeout=5, what=f"valkey-server (pid {valkey}) to stop with tether serve after {sig.name}")


# -- collect_stale on a temporary root -----------------------------------------------------------------
def _folder(root: Path, name: str, owner: dict | None) -> Path:
    d = root / f"tether-{name}"
    (d / "slot0").mkdir(parents=True)
    (d / "slot0" / "model.safetensors").write_bytes(b"x")
    if owner is not None:
        (d / OWNER_FILE).write_text(json.dumps(owner))
    return d


def _age(folder: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in [*folder.rglob("*"), folder]:
        os.utime(p, (t, t))


def test_collect_stale_keeps_a_live_owner(tmp_path):
    mine = _folder(tmp_path, "mine", owner_record())
    _age(mine, 7200)  # age does not matter while the owner lives (a paused run writes nothing)
    assert collect_stale(tmp_path) == [] and mine.exists()


def test_collect_stale_removes_folders_of_dead_owners(tmp_path):
    child = subprocess.Popen(["sleep", "60"])
    exited = owner_record(child.pid)
    zombie_child = subprocess.Popen(["sleep", "60"])
    zombie = owner_record(zombie_child.pid)
    child.kill()
    child.wait()  # reaped: the pid is free
    zombie_child.kill()  # not reaped yet: a zombie still holds its pid
    wait_for(lambda: _gone(zombie_child.pid), timeout=10, what="the child to become a zombie")
    try:
        reused = {**owner_record(), "start_time": process_start_time(os.getpid()) - 1}  # our pid, another process's start time
        dead = [_folder(tmp_path, "exited", exited), _folder(tmp_path, "zombie", zombie), _folder(tmp_path, "reused", reused)]
        keep = _folder(tmp_path, "alive", owner_record())
        assert sorted(collect_stale(tmp_path)) == sorted(dead)
        assert not any(d.exists() for d in dead) and keep.exists()
    finally:
        zombie_child.wait()


def test_collect_stale_ages_out_folders_without_owner(tmp_path):
    young = _folder(tmp_path, "young", None)  # e.g. just made by a writer about to write its owner.json
    _age(young, 600)
    old = _folder(tmp_path, "old", None)
    _age(old, 2 * 3600)
    broken = _folder(tmp_path, "broken", None)
    (broken / OWNER_FILE).write_text("{not json")
    _age(broken, 2 * 3600)
    assert sorted(collect_stale(tmp_path)) == sorted([old, broken])
    assert young.exists()


def test_collect_stale_keeps_owners_of_another_pid_namespace(tmp_path):
    # A container sharing /dev/shm (docker --ipc=host): its pid 1 is not ours, dead or alive we cannot tell.
    other = _folder(tmp_path, "other", {"pid": 999_999_999, "start_time": 1, "pid_ns": "pid:[1]"})
    assert collect_stale(tmp_path) == [] and other.exists()


def test_tmpfs_sync_records_its_owner_and_collects_a_dead_writers_folder(tmp_path):
    import torch

    dead = _folder(tmp_path, "dead-run", {**owner_record(), "start_time": -1})
    sync = TmpfsWeightSync(run_id="live-run", root=tmp_path)
    assert not dead.exists()  # collected when the sync was made
    sync.send([("w", torch.ones(2))], version=1)
    assert json.loads((sync.folder / OWNER_FILE).read_text()) == owner_record()
    assert sync.versions() == [1]
    TmpfsWeightSync(run_id="another", root=tmp_path)
    assert sync.folder.exists()  # its writer (this process) is alive
    sync.close()
    assert not sync.folder.exists()


# -- tether train --------------------------------------------------------------------------------------
def _train(tiny_cfg, runs_dir: Path, name: str, *extra: str) -> list[str]:
    return [str(TETHER), "train", "tiny", "--set", f"name={name}", "--set", f"data_dir={tiny_cfg.data_dir}", "--set", f"runs_dir={runs_dir}",
            "--set", "train.iterations=100000", "--set", "train.threads=1", "--set", "runtime.checkpoint_every=0", *extra]


def _weight_folders(name: str) -> list[Path]:
    """The run's tmpfs weight folders that hold a version: Ray mode tether-<name>-<id>-learner, local mode tether-<name>-local-<id>."""
    return [d for d in default_root().glob(f"tether-{name}-*") if any(d.glob("slot*"))]


def _wait_for_weights(name: str, proc: subprocess.Popen, log: Path) -> list[Path]:
    found = wait_for(lambda: proc.poll() is not None or _weight_folders(name), timeout=600, what=f"a weight folder of {name}", interval=0.2)
    assert proc.poll() is None, f"tether train ended before it was killed:\n{_tail(log)}"
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ray", "local"])
def test_sigterm_train_cleans_up_before_it_exits(mode, tiny_assets, tmp_path):
    """SIGTERM is what `ray job stop`, `kill` and docker send first: the run must clean up before it exits,
    its weight folders and its vLLM engine's shared memory (Ray mode: the rollout actor is killed after close). In Ray
    mode vLLM's engine core runs in the rollout actor (runtime.vllm_engine_core: auto): no message queue, no shared
    memory at all; a local run's engine keeps vLLM's own processes and their queues."""
    name = f"shutdown-{mode}-{uuid.uuid4().hex[:8]}"
    extra = [] if mode == "ray" else ["--set", "runtime.mode=local"]  # the vLLM engine either way
    log = tmp_path / "train.log"
    with _session(_train(tiny_assets[0], tmp_path / "runs", name, *extra), log) as proc:
        folders = _wait_for_weights(name, proc, log)
        shm = _shared_memory_of(proc.pid)
        if mode == "ray":
            assert not shm, f"vLLM shared memory in a Ray run, whose engine core should be in the rollout actor: {shm}"
        else:
            assert shm, "no vLLM shared memory found in the run's processes"
        os.kill(proc.pid, signal.SIGTERM)  # the trainer process only
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tether train still running 120 s after SIGTERM:\n{_tail(log)}")
        # 143 = SystemExit(128 + SIGTERM) after the clean-up; Ray's 3 s watchdog would make it -SIGABRT, mid clean-up
        assert proc.returncode == 128 + signal.SIGTERM, f"exit status {proc.returncode}\n{_tail(log)}"
        left = [d for d in folders if d.exists()]
        assert not left, f"weight folders left after SIGTERM: {left}\n{_tail(log)}"
        left = [m for m in shm if m.exists()]
        assert not left, f"shared memory left after SIGTERM: {left}"
        wait_for(lambda: not _session_pids(proc.pid), timeout=30, what="the run's Ray and vLLM processes to end with it")


@pytest.mark.slow
def test_sigkilled_train_weight_folder_is_collected_by_the_next_sync(tiny_assets, tmp_path):
    """SIGKILL leaves the folder behind; its owner is then gone, and the next TmpfsWeightSync removes it."""
    name = f"shutdown-kill-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "train.log"
    with _session(_train(tiny_assets[0], tmp_path / "runs", name), log) as proc:
        folders = _wait_for_weights(name, proc, log)
        owners = [json.loads((d / OWNER_FILE).read_text())["pid"] for d in folders]
        shm = _shared_memory_of(proc.pid)
        _kill_session(proc)  # the driver, its local Ray cluster, the actors and vLLM's processes: all of the session
    try:
        wait_for(lambda: all(_gone(p) for p in owners), timeout=60, what=f"the weight folders' owners {owners} to die with the run")
        assert all(d.exists() for d in folders)  # nothing in a SIGKILLed run could clean up
        probe = TmpfsWeightSync(run_id=f"{name}-probe")
        left = [d for d in folders if d.exists()]
        assert not left, f"weight folders of the SIGKILLed run not collected: {left}"
        assert not probe.folder.exists()  # nothing written until a send
    finally:
        for m in shm:  # vLLM's message queues die with no owner record: not collectable, so the test removes its own
            m.unlink(missing_ok=True)
