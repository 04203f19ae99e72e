"""uvicorn for `tether serve`: a SIGTERM or SIGINT ends the open metric streams, so the server exits within seconds.

uvicorn's shutdown closes idle connections, then waits for every response in progress to finish before it runs the app's
lifespan shutdown; a metric stream never finishes by itself, so `tether serve` stayed up, and its valkey with it, until the
last browser gave up (40 to 60 s). The signal handler here also sets ``services.server.streams.SHUTTING_DOWN``: each stream sees it
within one blocking read (1 s) and ends with an 'error' event (reason 'shutdown'). ``timeout_graceful_shutdown`` bounds the
wait for any other response.
"""
from __future__ import annotations

import uvicorn

from services.server.streams import SHUTTING_DOWN

GRACE_S = 3  # the longest uvicorn waits for the responses in progress once the signal came (then it cancels them)


class Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame) -> None:
        SHUTTING_DOWN.set()  # a threading.Event: set from a signal handler, read by the streams on the event loop
        super().handle_exit(sig, frame)


def run(app, *, host: str, port: int, log_level: str = "info") -> None:
    """As ``uvicorn.run(app, ...)`` (a second Ctrl+C still forces the exit), with the streams ended on the first signal."""
    SHUTTING_DOWN.clear()
    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACE_S))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled once it has shut down; uvicorn.run swallows it too
        pass
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE (the port was taken, the lifespan startup failed)
