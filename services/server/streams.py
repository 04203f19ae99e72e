"""Server-sent events of a run's metric stream, read with a non-blocking Redis client.

Each SSE client gets its own asyncio Redis connection and a blocking XREAD that parks on the event loop,
not on a worker thread: the old one-thread-per-stream design ran out of the thread pool's 40 workers, so
with 50 clients half of them received nothing. A client that asks for ``after=$`` ("only new rows") has
"$" resolved once, when it connects, to the stream's last id; every later read continues from the last id
it delivered, so rows that arrive between two reads are never skipped (re-sending "$" to XREAD on each
loop did skip them).

On SIGTERM/SIGINT the server sets ``SHUTTING_DOWN`` (services/server/serving.py) and every open stream ends within one read with an
'error' event that says so: uvicorn waits for the open responses to finish before it shuts down, and a stream never does by
itself (an open web page held `tether serve` up until the browser gave up).
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator

import redis
import redis.asyncio as aredis
from starlette.requests import Request

from services.state.redis_store import TERMINAL, metrics_key, run_key

_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
U64 = 2**64 - 1
# Set from the server's signal handler: the process is shutting down (module-wide: one server per process).
SHUTTING_DOWN = threading.Event()


def parse_stream_id(value: str, *, where: str) -> str:
    """A Redis stream id as a client may send it ('$', '0', '<step>' or '<step>-<k>', numbers of up to 20 digits: the API's
    schema), or ValueError naming ``where``. A number above 2^64 - 1, which no stream id reaches, is read as 2^64 - 1: after
    it there is nothing yet (before, the schema allowed such an id and the parser answered 400)."""
    v = value.strip()
    if v == "$":
        return v
    m = _ID.match(v)
    if not m:
        raise ValueError(f"{where} must be a metrics stream id: '$' (only new rows), '0' (everything), '<step>' or '<step>-<k>' "
                         f"with numbers of at most 20 digits (the 'id:' of a received event), got {value[:60]!r}")
    ms = min(int(m.group(1)), U64)
    return str(ms) if m.group(2) is None else f"{ms}-{min(int(m.group(2)), U64)}"


def _row(entry_id: str, f: dict[str, str]) -> dict:
    return {"id": entry_id, "step": int(f["step"]), "time": float(f["time"]), **json.loads(f["metrics"])}


async def metric_events(url: str, run_id: str, after: str, max_events: int | None, request: Request, *,
                        block_ms: int = 1000) -> AsyncIterator[str]:
    """SSE: 'state' at the start and whenever the run's state changes; the history after ``after``, then live rows
    ('metrics'); 'end' when the run is over; 'error' if Redis goes away (reason 'redis') or the server shuts down (reason
    'shutdown'), with the id to resume from (``last_event_id``, to send back as Last-Event-ID)."""
    client = aredis.Redis.from_url(url, decode_responses=True, socket_timeout=block_ms / 1000 + 5, socket_connect_timeout=2)
    key = metrics_key(run_id)
    sent = 0
    seen_state = None
    try:
        if after == "$":  # resolve "now" once: rows published after this moment are all delivered
            last = await client.xrevrange(key, count=1)
            after = last[0][0] if last else "0-0"
        while True:
            raw = await client.hget(run_key(run_id), "state")
            state = json.loads(raw) if raw is not None else None
            if state != seen_state:  # at the start and at every change: queued -> submitted -> running -> ...
                seen_state = state
                yield f"event: state\ndata: {json.dumps({'state': state})}\n\n"
            if await request.is_disconnected():
                return
            if SHUTTING_DOWN.is_set():
                yield _error("shutdown", f"the server is shutting down; reconnect with Last-Event-ID: {after} when it is back", after)
                return
            got = await client.xread({key: after}, block=block_ms, count=100)
            rows = [_row(i, f) for _, entries in got or [] for i, f in entries]
            for row in rows:
                after = row["id"]
                yield f"id: {row['id']}\nevent: metrics\ndata: {json.dumps(row)}\n\n"
                sent += 1
                if max_events is not None and sent >= max_events:
                    return
            if not rows:
                if state in TERMINAL:
                    yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"
                    return
                yield ": keep-alive\n\n"
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        # The status line has gone out already: say why the stream ends; the client resumes with Last-Event-ID.
        yield _error("redis", f"Redis is unreachable ({type(e).__name__}); reconnect with Last-Event-ID: {after}", after)
    finally:
        await client.aclose()


def _error(reason: str, detail: str, last_event_id: str) -> str:
    return f"event: error\ndata: {json.dumps({'reason': reason, 'detail': detail, 'last_event_id': last_event_id})}\n\n"
