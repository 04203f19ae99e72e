"""`tether serve` as a supervisor runs it: a real server process (`tether serve --no-ray`) over its real embedded valkey-server.

- SIGTERM and SIGINT end the open metric streams (an 'error' event with reason 'shutdown') and the server exits within
  seconds, stopping valkey. Before: with 3 streams open it exited only when the clients gave up (39.8 s and 60.7 s).
- A SIGKILLed server takes valkey with it (a parent-death signal); the next server gets the same port and the data.
  Before: valkey was left orphaned under PID 1.
- A killed valkey is restarted on its port with its data (AOF); a stream cut by the outage resumes with Last-Event-ID;
  when the restarts are exhausted every endpoint answers 503 with the reason, /healthz too. Before: 503 forever.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from waiting import wait_for

from services.state.redis_store import EmbeddedRedis, RunStore, ping

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TETHER = Path(sys.executable).with_name("tether")
TOKEN = "supervision-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _session_pids(sid: int) -> list[int]:
    out = []
    for p in psutil.process_iter():
        with suppress(OSError, psutil.Error):
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    data: Path
    log: Path

    def valkey(self) -> dict:
        """The embedded server's port file: {"port", "pid"}."""
        return json.loads((self.data / "redis" / "server.json").read_text())

    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.valkey()['port']}/0"

    def health(self) -> tuple[int, dict]:
        try:
            r = httpx.get(f"{self.url}/healthz", timeout=5)
            return r.status_code, r.json()
        except httpx.HTTPError as e:
            return 0, {"reason": repr(e)}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def _serve(tmp_path: Path, *extra: str, name: str = "serve"):
    """`tether serve --no-ray` on a free port, in a session of its own; whatever of that session is left is killed after."""
    port, data, log = _free_port(), tmp_path / "service", tmp_path / f"{name}.log"
    env = {**os.environ, "TETHER_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("TETHER_REDIS_URL", "RAY_ADDRESS"):
        env.pop(k, None)
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(TETHER), "serve", "--no-ray", "--port", str(port), "--data-dir", str(data), *extra], env=env,
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    s = Served(proc, f"http://127.0.0.1:{port}", data, log)
    try:
        wait_for(lambda: proc.poll() is not None or s.health()[0] == 200, timeout=60, what="GET /healthz of tether serve")
        assert proc.poll() is None, s.tail()
        yield s
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in _session_pids(proc.pid):  # e.g. a valkey that left the group: an orphan is what some tests look for
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _create_run(s: Served) -> str:
    r = httpx.post(f"{s.url}/runs", json={"config": {"name": "supervised"}}, headers=AUTH, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


class Stream(threading.Thread):
    """One SSE client of /runs/<id>/metrics/stream, collecting (event, data) pairs until the server ends the stream."""

    def __init__(self, s: Served, run_id: str, *, last_event_id: str | None = None, **params):
        super().__init__(daemon=True)
        self.url, self.run_id, self.params = s.url, run_id, {"after": "0", **params}
        self.headers = {**AUTH, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        self.events: list[tuple[str, dict]] = []
        self.status: int | None = None
        self.failure: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("GET", f"{self.url}/runs/{self.run_id}/metrics/stream", params=self.params, headers=self.headers,
                              timeout=httpx.Timeout(120, connect=10)) as r:
                self.status = r.status_code
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((event, json.loads(line[6:])))
        except httpx.HTTPError as e:  # a connection reset instead of an end of stream
            self.failure = e

    def steps(self) -> list[int]:
        return [d["step"] for e, d in self.events if e == "metrics"]

    def last(self) -> tuple[str, dict] | None:
        return self.events[-1] if self.events else None


def _ended(streams: list[Stream], timeout: float) -> None:
    for st in streams:
        st.join(timeout)
    assert not any(st.is_alive() for st in streams), "a stream is still open"
    assert not any(st.failure for st in streams), [repr(st.failure) for st in streams]


# -- shutdown with open streams ------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_open_streams_and_the_server_exits_with_valkey(sig, tmp_path):
    with _serve(tmp_path) as s:
        run_id = _create_run(s)
        streams = [Stream(s, run_id) for _ in range(3)]  # an open web page is one
        wait_for(lambda: all(st.events for st in streams), timeout=30, what="3 streams to send their first event")
        valkey = s.valkey()["pid"]
        t0 = time.monotonic()
        os.kill(s.proc.pid, sig)  # the server process only, as `kill` or a supervisor does
        try:
            s.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tether serve still running 20 s after {sig.name} with 3 streams open:\n{s.tail()}")
        took = time.monotonic() - t0
        wait_for(lambda: _gone(valkey), timeout=5, what=f"valkey-server (pid {valkey}) to stop with tether serve")
        _ended(streams, 5)
        print(f"\n{sig.name} with 3 streams open: tether serve exited after {took:.2f} s (exit status {s.proc.returncode})")
        assert took < 5, f"{took:.1f} s\n{s.tail()}"
        for st in streams:  # told why, and where to resume
            event, data = st.last()
            assert event == "error" and data["reason"] == "shutdown" and "shutting down" in data["detail"], st.events


# -- SIGKILL of the server -----------------------------------------------------------------------------------
def test_a_sigkilled_server_takes_valkey_with_it_and_the_next_keeps_port_and_data(tmp_path):
    with _serve(tmp_path) as s:
        run_id = _create_run(s)
        before = s.valkey()
        os.kill(s.proc.pid, signal.SIGTERM)  # what a supervisor does: SIGTERM, then SIGKILL without waiting long
        time.sleep(0.05)
        s.proc.kill()
        s.proc.wait(timeout=10)
        wait_for(lambda: _gone(before["pid"]), timeout=5, what=f"valkey-server (pid {before['pid']}) to die with the SIGKILLed server")
    with _serve(tmp_path, name="serve2") as s2:  # the same data dir: the port URLs handed out stay valid, the runs are there
        assert s2.valkey()["port"] == before["port"]
        r = httpx.get(f"{s2.url}/runs/{run_id}", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json()["state"] == "queued", r.text


# -- a killed valkey ---------------------------------------------------------------------------------------
def test_a_killed_valkey_is_restarted_with_its_data_and_streams_resume(tmp_path):
    with _serve(tmp_path) as s:
        run_id = _create_run(s)
        store = RunStore(s.redis_url())
        for step in (1, 2):
            store.add_metrics(run_id, f"{step}-1", step, {"reward/gold_mean": step / 10})
        streams = [Stream(s, run_id) for _ in range(3)]
        wait_for(lambda: all(st.steps() == [1, 2] for st in streams), timeout=30, what="3 streams to send the history")
        before = s.valkey()
        psutil.Process(before["pid"]).kill()
        t0 = time.monotonic()
        _ended(streams, 10)
        for st in streams:  # the stream in progress ends with 'error': Redis went away, resume after the last row received
            event, data = st.last()
            assert event == "error" and data["reason"] == "redis" and data["last_event_id"] == "2-1", st.events
        wait_for(lambda: s.health()[0] == 200, timeout=20, what=f"GET /healthz to answer 200 again\n{s.tail()}")
        print(f"\nvalkey SIGKILLed: /healthz 200 again after {time.monotonic() - t0:.2f} s")
        after = s.valkey()  # the port file names the new process before it answers (services/state/embedded_redis.py: _launch)
        assert after["port"] == before["port"] and after["pid"] != before["pid"], (before, after)
        assert psutil.Process(after["pid"]).ppid() == s.proc.pid  # restarted by tether serve, which owns it
        r = httpx.get(f"{s.url}/runs/{run_id}", headers=AUTH, timeout=10)  # the API's client reconnected; the run is kept (AOF)
        assert r.status_code == 200 and r.json()["state"] == "queued", r.text
        RunStore(s.redis_url()).add_metrics(run_id, "3-1", 3, {"reward/gold_mean": 0.3})  # published while the clients were away
        resumed = Stream(s, run_id, last_event_id="2-1", max_events=1)
        _ended([resumed], 20)
        assert resumed.status == 200 and resumed.steps() == [3], resumed.events
        assert "restarting the embedded Redis" in s.log.read_text(errors="replace")


def test_when_restarts_are_exhausted_every_endpoint_answers_503_with_the_reason(tmp_path):
    with _serve(tmp_path, "--redis-restarts", "2") as s:
        run_id = _create_run(s)
        valkey = s.valkey()["pid"]
        # valkey refuses to start on a corrupt append-only manifest: every restart fails
        (s.data / "redis" / "appendonlydir" / "appendonly.aof.manifest").write_text("not a manifest\n")
        psutil.Process(valkey).kill()
        code, body = wait_for(lambda: (h := s.health())[0] == 503 and "gave up" in (h[1].get("reason") or "") and h, timeout=30,
                              what="GET /healthz to say the restarts are exhausted")
        reason = body["reason"]
        assert body["ok"] is False and "2 restarts" in reason and "Invalid AOF manifest" in reason, reason
        for path in (f"/runs/{run_id}", "/runs", f"/runs/{run_id}/metrics/stream"):
            r = httpx.get(f"{s.url}{path}", headers=AUTH, timeout=10)
            assert r.status_code == 503 and "gave up" in r.json()["detail"], (path, r.status_code, r.text)
        time.sleep(2)
        assert s.health()[0] == 503 and not any(p.name().startswith("valkey") for p in map(psutil.Process, _session_pids(s.proc.pid)))
        t0 = time.monotonic()
        os.kill(s.proc.pid, signal.SIGTERM)
        s.proc.wait(timeout=20)
        assert time.monotonic() - t0 < 5, s.tail()


def test_a_server_started_from_a_thread_that_ends_outlives_that_thread(tmp_path):
    """The parent-death signal fires when the *thread* that forked valkey ends: every fork is made by the owner's own thread."""
    server = EmbeddedRedis(tmp_path)
    th = threading.Thread(target=server.start)
    th.start()
    th.join()
    pid, port = server.pid, json.loads((tmp_path / "redis" / "server.json").read_text())["port"]
    try:
        time.sleep(0.5)
        assert server.owned and not _gone(pid) and ping("127.0.0.1", port)
    finally:
        server.stop()
    assert _gone(pid)
