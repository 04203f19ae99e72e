"""`tether serve`: the REST API over Redis (run records, metrics, commands) and Ray's job submission.

Every endpoint except GET /healthz needs ``Authorization: Bearer <token>`` (401 when missing, 403 when
wrong). The token comes from env TETHER_API_TOKEN, else from ``<data_dir>/api_token`` (generated once,
mode 0600). A run's config is validated (services/api_models.ServiceRunConfig), its paths resolved inside
the data directory, stored in Redis and in ``<data_dir>/service/<run_id>/tether.yaml``, then a Ray job
runs ``tether prepare <yaml> && tether train <yaml> --run-id <id> --redis-url <url>``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shlex
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from learner.config import TetherConfig, config_from_dump
from services.api_models import (Checkpoint, CommandAccepted, CommandInfo, Health, MetricRow, ParamChange, ParamUpdate, Run,
                                 RunCreate)
from services.jobs import RayJobs
from services.redis_store import RunStore

log = logging.getLogger(__name__)
TERMINAL = ("stopped", "finished", "failed", "submit_failed")
STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServiceSettings:
    data_dir: Path
    redis_url: str
    token: str
    jobs: RayJobs | None = None
    job_env: dict[str, str] = field(default_factory=lambda: {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    tether_bin: str = field(default_factory=lambda: str(Path(sys.executable).with_name("tether")))


def load_or_create_token(data_dir: Path) -> tuple[str, str]:
    """(token, where it came from): env TETHER_API_TOKEN, else <data_dir>/api_token (created once, 0600)."""
    env = os.environ.get("TETHER_API_TOKEN")
    if env:
        return env, "env TETHER_API_TOKEN"
    path = Path(data_dir) / "api_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip(), str(path)


def combined_status(state: str, job_status: str | None) -> str:
    if job_status in ("FAILED", "STOPPED") and state not in TERMINAL:
        return "failed" if job_status == "FAILED" else "stopped"
    if job_status == "PENDING" and state == "created":
        return "pending"
    if job_status == "RUNNING" and state == "created":
        return "starting"
    return state


def create_app(settings: ServiceSettings) -> FastAPI:
    data_dir = Path(settings.data_dir).resolve()
    store = RunStore(settings.redis_url)
    bearer = HTTPBearer(auto_error=False, description="The service token: env TETHER_API_TOKEN or <data_dir>/api_token.")
    app = FastAPI(
        title="tether", version="0.1.0",
        description="Runs of RL alignment with drift control (PPO+KL, Elastic Reset, reward ensembles): create, watch, steer. "
        "Send `Authorization: Bearer <token>` on every endpoint but /healthz.",
    )
    app.state.store, app.state.settings = store, settings

    def auth(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cred is None:
            raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>' (the token is in env TETHER_API_TOKEN "
                                     "or <data_dir>/api_token of the server)", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(cred.credentials.encode(), settings.token.encode()):
            raise HTTPException(403, "invalid bearer token: it does not match the server's token")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [".".join(str(p) for p in e["loc"] if p != "body") for e in errors]
        message = "; ".join(f"{f or '<body>'}: {e['msg']}" for f, e in zip(fields, errors))
        detail = [{"loc": list(e["loc"]), "field": f, "msg": e["msg"], "type": e["type"]} for f, e in zip(fields, errors)]
        return JSONResponse(status_code=422, content={"message": f"invalid request: {message}", "detail": detail})

    def get_record(run_id: str) -> dict[str, Any]:
        rec = store.get_run(run_id)
        if rec is None:
            raise HTTPException(404, f"no run with id {run_id!r}")
        return rec

    def view(rec: dict[str, Any]) -> Run:
        job_status = None
        if settings.jobs is not None and rec.get("job_id"):
            job_status = settings.jobs.status(rec["job_id"])
        return Run(**{**rec, "job_status": job_status, "status": combined_status(rec.get("state", "created"), job_status)})

    def run_dir(rec: dict[str, Any]) -> Path:
        d = rec.get("run_dir")
        if not d:
            raise HTTPException(404, "the run has not started yet (no run folder)")
        p = Path(d).resolve()
        if not p.is_relative_to(data_dir):
            raise HTTPException(500, "the run folder recorded for this run is outside the data directory; refusing to read it")
        return p

    def command(run_id: str, type_: str, args: dict | None = None) -> CommandAccepted:
        rec = get_record(run_id)
        if rec.get("state") in TERMINAL:
            raise HTTPException(409, f"run {run_id} is {rec['state']}: it takes no more commands")
        cid = store.send_command(run_id, type_, args or {})
        return CommandAccepted(run_id=run_id, command_id=cid, type=type_, args=args or {})

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> Health:
        try:
            ok = bool(store.r.ping())
        except Exception:  # noqa: BLE001 - health reports, never raises
            ok = False
        return Health(ok=ok, redis=ok)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        index = STATIC / "index.html"
        if not index.exists():
            raise HTTPException(404, "the web page is not installed")
        return FileResponse(index)

    @app.post("/runs", response_model=Run, status_code=201, tags=["runs"], dependencies=[Depends(auth)],
              responses={503: {"description": "Ray's job submission failed (the run is kept with state submit_failed)"}})
    def create_run(body: RunCreate) -> Run:
        run_id = f"r-{uuid.uuid4().hex[:8]}"
        cfg = TetherConfig.model_validate(body.config.model_dump(exclude_unset=True))
        # Paths were checked to be relative and free of '..': resolve them inside the data directory.
        cfg.data_dir = str(data_dir / cfg.data_dir)
        cfg.runs_dir = str(data_dir / cfg.runs_dir / run_id)
        folder = data_dir / "service" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        cfg_path = folder / "tether.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
        job_id = f"tether-{run_id}"
        store.create_run(run_id, {"name": cfg.name, "config": cfg.dump(), "job_id": job_id, "config_path": str(cfg_path)})
        q = shlex.quote
        entrypoint = (f"{q(settings.tether_bin)} prepare {q(str(cfg_path))} && "
                      f"{q(settings.tether_bin)} train {q(str(cfg_path))} --run-id {run_id} --redis-url {q(settings.redis_url)}")
        if settings.jobs is None:
            store.update_run(run_id, state="submit_failed", error="this server was started without Ray job submission")
            raise HTTPException(503, "this server was started without Ray job submission (--no-ray); the run was stored, not started")
        try:
            settings.jobs.submit(entrypoint, job_id=job_id, env=settings.job_env)
        except Exception as e:  # noqa: BLE001 - reported to the client with the cause
            store.update_run(run_id, state="submit_failed", error=str(e))
            raise HTTPException(503, f"Ray job submission failed: {e}") from None
        return view(get_record(run_id))

    @app.get("/runs", response_model=list[Run], tags=["runs"], dependencies=[Depends(auth)])
    def list_runs() -> list[Run]:
        return [view(r) for r in store.list_runs()]

    @app.get("/runs/{run_id}", response_model=Run, tags=["runs"], dependencies=[Depends(auth)])
    def get_run(run_id: str) -> Run:
        return view(get_record(run_id))

    for kind, doc in (("pause", "Pause between iterations (the trainer blocks until resume or stop)."),
                      ("resume", "Resume a paused run."),
                      ("stop", "Stop after the current iteration, with a checkpoint (state 'stopped')."),
                      ("reset", "Elastic Reset now: policy <- EMA, EMA <- initial, then a weight sync (needs elastic_reset.enabled).")):
        app.post(f"/runs/{{run_id}}/{kind}", response_model=CommandAccepted, status_code=202, tags=["control"],
                 dependencies=[Depends(auth)], summary=doc, name=f"{kind}_run")(_command_endpoint(kind, get_record, command))

    @app.patch("/runs/{run_id}/params", response_model=CommandAccepted, status_code=202, tags=["control"], dependencies=[Depends(auth)])
    def set_params(run_id: str, body: ParamUpdate) -> CommandAccepted:
        """Change parameters that are safe to change mid-run; the trainer applies them between iterations and
        records each change with its time and step (GET /runs/{id}/changes)."""
        rec = get_record(run_id)
        try:
            body.check_against(config_from_dump(rec["config"]))
        except ValueError as e:
            field_name = str(e).split(":", 1)[0]
            return JSONResponse(status_code=422, content={"message": f"invalid request: {e}",
                                                          "detail": [{"loc": ["body", field_name], "field": field_name, "msg": str(e)}]})
        return command(run_id, "set", body.model_dump(exclude_none=True))

    @app.get("/runs/{run_id}/commands", response_model=list[CommandInfo], tags=["control"], dependencies=[Depends(auth)])
    def list_commands(run_id: str) -> list[dict]:
        get_record(run_id)
        return store.commands(run_id)

    @app.get("/runs/{run_id}/changes", response_model=list[ParamChange], tags=["control"], dependencies=[Depends(auth)])
    def list_changes(run_id: str) -> list[dict]:
        get_record(run_id)
        return store.changes(run_id)

    @app.get("/runs/{run_id}/metrics", response_model=list[MetricRow], tags=["metrics"], dependencies=[Depends(auth)])
    def metrics(run_id: str, from_step: int | None = Query(None, ge=0, description="First step (inclusive)."),
                to_step: int | None = Query(None, ge=0, description="Last step (inclusive)."),
                count: int | None = Query(None, ge=1, le=100_000, description="At most this many rows.")) -> list[dict]:
        get_record(run_id)
        return store.metrics(run_id, start="-" if from_step is None else str(from_step),
                             end="+" if to_step is None else str(to_step), count=count)

    @app.get("/runs/{run_id}/metrics/stream", tags=["metrics"], dependencies=[Depends(auth)],
             responses={200: {"content": {"text/event-stream": {"example": 'id: 12-1\nevent: metrics\ndata: {"step": 12, "reward/gold_mean": 0.4}\n\n'}},
                              "description": "Server-sent events: 'metrics' per row, 'end' when the run is over; ': keep-alive' comments."}})
    async def stream(run_id: str, request: Request,
                     after: str = Query("0", description="Send rows after this stream id ('0' = the whole history first, '$' = only new)."),
                     max_events: int | None = Query(None, ge=1, description="Close after this many 'metrics' events.")):
        get_record(run_id)
        last = request.headers.get("last-event-id") or after
        return StreamingResponse(_events(store, run_id, last, max_events, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/runs/{run_id}/report", response_class=HTMLResponse, tags=["results"], dependencies=[Depends(auth)])
    def report(run_id: str):
        """The run's HTML report (written when the run ends)."""
        p = run_dir(get_record(run_id)) / "report.html"
        if not p.exists():
            raise HTTPException(404, "no report yet: it is written when the run ends")
        return FileResponse(p, media_type="text/html")

    @app.get("/runs/{run_id}/checkpoints", response_model=list[Checkpoint], tags=["results"], dependencies=[Depends(auth)])
    def checkpoints(run_id: str) -> list[Checkpoint]:
        root = run_dir(get_record(run_id)) / "checkpoints"
        if not root.exists():
            return []
        out = []
        for p in sorted(root.glob("step-*")):
            if (p / "driver.json").exists():
                t = json.loads((p / "driver.json").read_text()).get("time")
                out.append(Checkpoint(name=p.name, step=int(p.name.split("-")[1]), path=str(p), time=t))
        return out

    return app


def _command_endpoint(kind: str, get_record, command):
    def endpoint(run_id: str) -> CommandAccepted:
        if kind == "reset" and not (get_record(run_id).get("config") or {}).get("elastic_reset", {}).get("enabled"):
            raise HTTPException(409, "reset needs elastic_reset.enabled: true in the run's config (there is no EMA to reset to)")
        return command(run_id, kind)

    endpoint.__name__ = f"{kind}_run"
    return endpoint


async def _events(store: RunStore, run_id: str, last: str, max_events: int | None, request: Request):
    """SSE: history after ``last`` then live rows (blocking XREAD in a worker thread), 'end' when the run is over."""
    sent = 0
    while True:
        if await request.is_disconnected():
            return
        rows = await asyncio.to_thread(store.read_metrics, run_id, last, block_ms=1000)
        for row in rows:
            last = row["id"]
            yield f"id: {row['id']}\nevent: metrics\ndata: {json.dumps(row)}\n\n"
            sent += 1
            if max_events is not None and sent >= max_events:
                return
        if not rows:
            rec = await asyncio.to_thread(store.get_run, run_id)
            if rec and rec.get("state") in TERMINAL:
                yield f"event: end\ndata: {json.dumps({'state': rec['state']})}\n\n"
                return
            yield ": keep-alive\n\n"
