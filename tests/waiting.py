"""Polling helper shared by the tests that watch a live run, server or browser."""
import time


def wait_for(cond, timeout: float = 120.0, what: str = "condition", interval: float = 0.1):
    """Return cond()'s first truthy value, or fail naming what never happened."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def serve(app):
    """Run an ASGI app with a real uvicorn server on a free loopback port; a context manager yielding its URL."""
    import contextlib
    import socket
    import threading

    import uvicorn

    @contextlib.contextmanager
    def running():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        th.start()
        try:
            wait_for(lambda: srv.started, 30, "uvicorn", interval=0.05)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            srv.should_exit = True
            th.join(10)
            sock.close()

    return running()
