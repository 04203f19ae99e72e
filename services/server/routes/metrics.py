"""A run's metrics: the logged rows, and their live stream (server-sent events)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from services.server.api_models import MetricRow, errors
from services.server.deps import AUTH, MAX_STEP, RUN_ID, State
from services.server.streams import metric_events, parse_stream_id

router = APIRouter(tags=["metrics"], dependencies=AUTH)


@router.get("/runs/{run_id}/metrics", response_model=list[MetricRow], responses=errors(404))
def metrics(st: State, run_id: str = RUN_ID,
            from_step: int | None = Query(None, ge=0, le=MAX_STEP, description="First step (inclusive)."),
            to_step: int | None = Query(None, ge=0, le=MAX_STEP, description="Last step (inclusive)."),
            count: int | None = Query(None, ge=1, le=100_000, description="At most this many rows.")) -> list[dict]:
    st.get_record(run_id)
    return st.store.metrics(run_id, start="-" if from_step is None else str(from_step),
                            end="+" if to_step is None else str(to_step), count=count)


@router.get("/runs/{run_id}/metrics/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"},
                                                              "example": 'id: 12-1\nevent: metrics\ndata: {"step": 12, "reward/gold_mean": 0.4}\n\n'}},
                             "description": "Server-sent events: 'state' at the start and on every change, 'metrics' per row, "
                                            "'end' when the run is over, 'error' if Redis goes away or the server shuts down "
                                            "({reason: redis | shutdown, detail, last_event_id}); ': keep-alive' comments."},
                       **errors(400, 404)})
def stream(st: State, request: Request, run_id: str = RUN_ID,
           after: str = Query("0", max_length=64, pattern=r"^(\$|\d{1,20}(-\d{1,20})?)$",
                              description="Send rows after this stream id ('0' = the whole history first, '$' = only new)."),
           max_events: int | None = Query(None, ge=1, le=1_000_000, description="Close after this many 'metrics' events.")):
    try:
        last = parse_stream_id(after, where="after")
        header = request.headers.get("last-event-id")
        if header is not None:
            last = parse_stream_id(header, where="the Last-Event-ID header")
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    st.get_record(run_id)
    return StreamingResponse(metric_events(st.settings.redis_url, run_id, last, max_events, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
