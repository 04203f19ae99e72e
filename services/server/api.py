"""`tether serve`: the REST API over Redis (run records, metrics, commands), an admission queue, and Ray's job submission.

Every endpoint except GET /healthz, the page and the API docs needs ``Authorization: Bearer <token>``
(401 when missing, 403 when wrong), checked before the body is read (services/server/api_security.py). The
token comes from env TETHER_API_TOKEN, else from ``<data_dir>/api_token`` (generated once, mode 0600).
A run's config is validated (services/api_models.ServiceRunConfig and the service's limits), its paths
resolved inside the data directory, stored in Redis and in ``<data_dir>/service/<run_id>/tether.yaml``,
and queued; the scheduler (services/server/scheduler.py) admits it when the cluster has room, as a Ray job
running ``tether prepare <yaml> && tether train <yaml> --run-id <id> --redis-url <url>``.
While Redis is unreachable every endpoint answers 503 with a JSON reason, and so does /healthz.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import redis
import yaml
from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from actors.placement import job_env_vars
from learner.config import TetherConfig, config_from_dump
from services.server.api_models import (DEFAULT_LIMITS, PRESETS, Checkpoint, CommandAccepted, CommandInfo, Error, Health, MetricRow, ParamChange,
                                 ParamUpdate, Preset, Run, RunCreate, RunsPage, RunSummary, Sample, SamplesPage, errors, local_shadows,
                                 over_limits, resolve_data_refs)
from services.server.api_schema import truthful_openapi
from services.server.api_security import Gate, HeadAsGet
from services.server.presets import Presets
from services.state.jobs import RayJobs
from services.state.redis_store import TERMINAL, RunStore
from services.state.runlog import finite_number, read_samples, sample_steps
from services.server.scheduler import NeverFits, Scheduler
from services.state.jobs import run_resources
from services.server.streams import metric_events, parse_stream_id

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
MAX_STEP = 2**53  # steps are stream-id prefixes; larger values would reach Redis as invalid ids
RUN_ID = PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A run id as returned by POST /runs (e.g. r-1a2b3c4d).")


@dataclass
class ServiceSettings:
    data_dir: Path
    redis_url: str
    token: str
    jobs: RayJobs | None = None
    job_env: dict[str, str] = field(default_factory=job_env_vars)
    tether_bin: str = field(default_factory=lambda: str(Path(sys.executable).with_name("tether")))
    max_runs: int | None = None  # None: as many as the cluster's CPUs/GPUs hold (services/server/scheduler.py)
    job_retries: int = 1  # a run whose driver died is resumed from its checkpoint this many times (services/server/scheduler.py)
    limits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    max_body_bytes: int = 1024 * 1024  # a full config dump is about 6 KB
    scheduler_poll_s: float = 1.0
    redis_problem: Callable[[], str | None] | None = None  # why the embedded Redis is away: restarting, gave up (services/state/embedded_redis.py)
    presets_dir: Path | None = None  # `tether serve --presets DIR`: more presets (DIR/*.yaml) beside the built-in ones
    cors_origins: list[str] = field(default_factory=list)  # `--cors-origin`: browser origins (scheme://host:port) allowed to call the API
    mlflow_uri: str | None = None  # `--mlflow-uri`: the MLflow tracking server of runs with tracking.mlflow.enabled (else a store in the run folder)
    wandb_online: bool = False  # `--wandb-online`: runs may use tracking.wandb.mode online (with the service's W&B credentials)


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
    if state == "submitted" and job_status == "PENDING":
        return "pending"
    if state == "submitted" and job_status == "RUNNING":
        return "starting"
    return state


class _PresetsScope:
    """Makes this app's presets the ones a request body's ``preset`` is looked up in (validation runs before the endpoint)."""

    def __init__(self, app, presets: Presets):
        self.app, self.presets = app, presets

    async def __call__(self, scope, receive, send):
        token = PRESETS.set(self.presets)
        try:
            await self.app(scope, receive, send)
        finally:
            PRESETS.reset(token)


def relative_to(obj: Any, root: Path) -> Any:
    """``obj`` with every absolute path inside ``root`` written relative to it (what a client sees: no server layout)."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, str):
        return obj.replace(prefix, "") if prefix in obj else ("." if obj == prefix[:-1] else obj)
    if isinstance(obj, dict):
        return {k: relative_to(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_to(v, root) for v in obj]
    return obj


def _invalid(fields: list[tuple[str, str]]) -> JSONResponse:
    """A 422 in the shape of request validation errors, for rules checked after parsing (limits, the cluster's size)."""
    message = "; ".join(f"{f}: {m}" for f, m in fields)
    detail = [{"loc": ["body", *f.split(".")], "field": f, "msg": m, "type": "value_error"} for f, m in fields]
    return JSONResponse(status_code=422, content={"message": f"invalid request: {message}", "detail": detail})


def create_app(settings: ServiceSettings) -> FastAPI:
    data_dir = Path(settings.data_dir).resolve()
    store = RunStore(settings.redis_url)
    presets = Presets(settings.presets_dir)
    q = shlex.quote

    def submit(rec: dict[str, Any]) -> None:
        cfg_path, run_id = rec["config_path"], rec["id"]
        # in the run's own service folder (only its tether.yaml there): a model name can only be a hub name or an absolute path
        # the service wrote, never a folder relative to wherever the job happens to start
        entrypoint = (f"cd {q(str(Path(cfg_path).parent))} && {q(settings.tether_bin)} prepare {q(cfg_path)} && "
                      f"{q(settings.tether_bin)} train {q(cfg_path)} --run-id {run_id} --redis-url {q(settings.redis_url)}")
        settings.jobs.submit(entrypoint, job_id=rec["job_id"], env=settings.job_env)

    def resume(rec: dict[str, Any]) -> None:  # a job whose driver died: continue its run folder from the checkpoint
        root = str(Path(rec["run_dir"]).parent)  # the trainer reports <run folder>/main; --resume takes the run folder
        entrypoint = (f"cd {q(str(Path(rec['config_path']).parent))} && "
                      f"{q(settings.tether_bin)} train --resume {q(root)} --run-id {rec['id']} --redis-url {q(settings.redis_url)}")
        settings.jobs.submit(entrypoint, job_id=rec["job_id"], env=settings.job_env)

    # Without Ray (--no-ray) this replica stores and queues runs; a replica with Ray on the same Redis admits them.
    scheduler = Scheduler(store, settings.jobs, None if settings.jobs is None else submit, max_runs=settings.max_runs,
                          resume=None if settings.jobs is None else resume, job_retries=settings.job_retries)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        stop = threading.Event()
        th = threading.Thread(target=scheduler.run_forever, args=(stop,), kwargs={"poll_s": settings.scheduler_poll_s},
                              name="tether-scheduler", daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join(10)

    # Documented for every endpoint by the app: the gate's answers, validation errors, Redis outages.
    common = errors(400, 401, 403, 413, 422, 503)
    app = FastAPI(
        title="tether", version="0.2.0", lifespan=lifespan, responses=common, docs_url=None, redoc_url=None,
        description="Runs of RL alignment with drift control (PPO+KL, Elastic Reset, reward ensembles): create, watch, steer. "
        "Send `Authorization: Bearer <token>` on every endpoint but /healthz, /, /static/ and the API docs. HEAD is answered "
        "wherever GET is. Request bodies are JSON (`Content-Type: application/json`; 415 otherwise).",
    )
    # outermost last: CORS answers preflights (no token on them), then the gate, then HEAD as GET, then the request's presets
    app.add_middleware(_PresetsScope, presets=presets)
    app.add_middleware(HeadAsGet)
    app.add_middleware(Gate, token=settings.token, max_body=settings.max_body_bytes)
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                       allow_methods=["GET", "HEAD", "POST", "PATCH"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                       expose_headers=["Retry-After"], max_age=600)
    app.openapi = truthful_openapi(app, settings.limits)
    app.state.store, app.state.settings, app.state.scheduler, app.state.presets = store, settings, scheduler, presets
    # The token is checked by the Gate before the body is read; this dependency only declares the scheme in OpenAPI.
    bearer = HTTPBearer(auto_error=False, description="The service token: env TETHER_API_TOKEN or <data_dir>/api_token.")
    auth = [Depends(bearer)]

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        fields = [".".join(str(p) for p in e["loc"] if p not in ("body", "path", "query", "header")) for e in errs]
        detail = [{"loc": [str(p) if not isinstance(p, int) else p for p in e["loc"]], "field": f, "msg": e["msg"], "type": e["type"]}
                  for f, e in zip(fields, errs)]
        message = "; ".join(f"{f or '<body>'}: {e['msg']}" for f, e in zip(fields, errs))
        return JSONResponse(status_code=422, content={"message": f"invalid request: {message}", "detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route matching the path; list every method of the path
            allowed = sorted({m for r in app.routes if isinstance(r, APIRoute) and r.matches(request.scope)[0] != Match.NONE
                              for m in r.methods})
            headers["Allow"] = ", ".join(sorted({*allowed, "HEAD"} if "GET" in allowed else allowed))
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=headers)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        if isinstance(exc, REDIS_DOWN):
            why = (settings.redis_problem and settings.redis_problem()) or "the service's state is there: try again when it is back"
            return JSONResponse(status_code=503, content={"detail": f"Redis is unreachable ({type(exc).__name__}: {exc}); {why}"},
                                headers={"Retry-After": "5"})
        log.exception("Redis error")
        return JSONResponse(status_code=503, content={"detail": f"Redis answered an error ({type(exc).__name__}: {exc})"})

    def get_record(run_id: str) -> dict[str, Any]:
        rec = store.get_run(run_id)
        if rec is None:
            raise HTTPException(404, f"no run with id {run_id!r}")
        return {"id": run_id, **rec}

    def view(rec: dict[str, Any], positions: dict[str, int] | None = None) -> Run:
        pos = (positions if positions is not None else scheduler.positions()).get(rec["id"]) if rec.get("state") == "queued" else None
        # a record written only by a trainer (fields missing) is still served whole, never a 500
        base = {"id": rec.get("id") or "", "name": rec.get("name") or rec.get("id") or "", "state": "submitted",
                "created": rec.get("updated") or 0.0, "updated": 0.0}
        rec = relative_to({**base, **rec}, data_dir)
        return Run(**{**rec, "queue_position": pos, "status": combined_status(rec["state"], rec.get("job_status"))})

    def run_dir(rec: dict[str, Any]) -> Path:
        d = rec.get("run_dir")
        if not d:
            raise HTTPException(404, "the run has not started yet (no run folder)")
        p = Path(d).resolve()
        if not p.is_relative_to(data_dir):
            raise HTTPException(404, "the run folder recorded for this run is outside the data directory; refusing to read it")
        return p

    def command(run_id: str, type_: str, args: dict | None = None) -> CommandAccepted:
        rec = get_record(run_id)
        if rec.get("state") in TERMINAL:
            raise HTTPException(409, f"run {run_id} is {rec['state']}: it takes no more commands")
        if rec.get("state") == "queued":  # not started: a command kept until then would act on a run nobody watches
            raise HTTPException(409, f"run {run_id} is queued (not started): {type_} applies once it runs; stop takes it off the queue")
        if type_ in ("pause", "resume"):
            # what the run will be once the commands it has not taken yet are applied: a command that changes nothing is a conflict
            paused = rec.get("state") == "paused"
            for c in store.commands(run_id):
                if not c.get("ack") and c.get("type") in ("pause", "resume"):
                    paused = c["type"] == "pause"
            if paused == (type_ == "pause"):
                raise HTTPException(409, f"run {run_id} is {'paused' if paused else 'not paused'} already (counting the commands it has not "
                                         f"taken yet): {type_} would change nothing")
        cid = store.send_command(run_id, type_, args or {})
        return CommandAccepted(run_id=run_id, command_id=cid, type=type_, args=args or {})

    docs_assets = Path(__import__("fastapi_offline").__file__).resolve().parent / "static"

    @app.get("/docs", include_in_schema=False)
    def swagger_docs():  # Swagger UI from fastapi-offline's copy (no CDN: an offline cluster gets the docs too)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="tether API", swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css", swagger_favicon_url="/static/docs/favicon.png",
                                   oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_redirect():
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc_docs():
        return get_redoc_html(openapi_url="/openapi.json", title="tether API", redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)

    plotly_js = Path(__import__("plotly").__file__).resolve().parent / "package_data" / "plotly.min.js"

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_asset():  # the page's charting library, from the plotly package itself
        return FileResponse(plotly_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static/docs", StaticFiles(directory=docs_assets), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/presets", response_model=list[Preset], tags=["runs"], dependencies=auth)
    def list_presets() -> list[dict]:
        """Named starting configs: POST /runs {"preset": name, "config": overrides}."""
        return presets.listing()

    @app.get("/healthz", response_model=Health, tags=["service"], responses={503: {"model": Health, "description": "Redis is unreachable."}})
    def healthz():
        try:
            store.r.ping()
        except Exception as e:  # noqa: BLE001 - health reports, never raises
            why = settings.redis_problem and settings.redis_problem()
            return JSONResponse(status_code=503, content=Health(ok=False, redis=False, reason=f"Redis is unreachable ({type(e).__name__})"
                                                                + (f": {why}" if why else "")).model_dump())
        return Health(ok=True, redis=True)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.post("/runs", response_model=Run, status_code=201, tags=["runs"], dependencies=auth,
              responses={201: {"description": "Stored and queued (status 'queued', with its queue_position) or admitted at once "
                                               "(its Ray job submitted)."},
                         **errors(503)})
    def create_run(body: RunCreate):
        """Validate, store and queue a run; it is admitted in order when the cluster has room for what it declares."""
        data = body.config.model_dump(exclude_unset=True)
        data["guard"] = body.config.guard.model_dump()  # the service's guard default (on) reaches the saved config whole
        cfg = TetherConfig.model_validate(data)
        if cfg.tracking.wandb.enabled and cfg.tracking.wandb.mode == "online" and not settings.wandb_online:
            return _invalid([("config.tracking.wandb.mode", "online would send this run to W&B with the service's credentials; this "
                                                           "service allows offline and disabled (the operator enables online with tether serve --wandb-online)")])
        if cfg.tracking.mlflow.enabled and settings.mlflow_uri:
            cfg.tracking.mlflow.tracking_uri = settings.mlflow_uri
        shadowed = local_shadows(cfg, [Path.cwd(), data_dir])  # 'org/model' that names a folder on this server is a path, not a hub name
        if shadowed:
            return _invalid(shadowed)
        bad_refs = resolve_data_refs(cfg, data_dir)  # data:<path>: the operator's models and prompts inside the data directory
        if bad_refs:
            return _invalid(bad_refs)
        over = over_limits(cfg, settings.limits)
        if over:
            return _invalid(over)
        need = run_resources(cfg)
        try:
            scheduler.check_fits(need)
        except NeverFits as e:
            return _invalid([("config.runtime", str(e))])
        run_id = f"r-{uuid.uuid4().hex[:8]}"
        # Paths were checked to be relative and free of '..': resolve them inside the data directory.
        cfg.data_dir = str(data_dir / cfg.data_dir)
        cfg.runs_dir = str(data_dir / cfg.runs_dir / run_id)
        folder = data_dir / "service" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        cfg_path = folder / "tether.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
        store.create_run(run_id, {"name": cfg.name, "config": cfg.dump(), "job_id": f"tether-{run_id}", "config_path": str(cfg_path),
                                  "state": "queued", "resources": need, "algorithm": cfg.algorithm})
        scheduler.enqueue(run_id)
        scheduler.tick(reconcile=False)  # admit now if there is room: the client learns a submission failure at once
        rec = get_record(run_id)
        if rec["state"] == "submit_failed":
            raise HTTPException(503, f"{rec.get('error')}; the run was stored (state submit_failed), not started")
        return view(rec)

    @app.get("/runs", response_model=RunsPage, tags=["runs"], dependencies=auth)
    def list_runs(offset: int = Query(0, ge=0, le=10**9, description="Skip this many (newest first)."),
                  limit: int = Query(50, ge=1, le=500, description="At most this many runs."),
                  state: str | None = Query(None, max_length=200, pattern=r"^[a-z_]+(,[a-z_]+)*$",
                                            description="Only runs in these states (comma-separated, e.g. running,paused)."),
                  q: str | None = Query(None, max_length=200, description="Only runs whose id or name contains this (case-insensitive).")) -> RunsPage:
        """Run summaries, newest first, a page at a time (GET /runs/{id} has a run's config)."""
        positions = scheduler.positions()
        states = set(state.split(",")) if state else None
        rows = store.summaries(states=states, text=q)
        page = [RunSummary(**{**relative_to(r, data_dir), "name": r.get("name") or r["id"], "state": r.get("state") or "submitted",
                              "created": r.get("created") or r.get("updated") or 0.0, "updated": r.get("updated") or 0.0,
                              "status": combined_status(r.get("state") or "submitted", r.get("job_status")),
                              "queue_position": positions.get(r["id"]) if r.get("state") == "queued" else None})
                for r in rows[offset:offset + limit]]
        return RunsPage(total=len(rows), offset=offset, limit=limit, runs=page)

    @app.get("/runs/{run_id}", response_model=Run, tags=["runs"], dependencies=auth, responses=errors(404))
    def get_run(run_id: str = RUN_ID) -> Run:
        return view(get_record(run_id))

    for kind, doc in (("pause", "Pause between iterations (the trainer blocks until resume or stop)."),
                      ("resume", "Resume a paused run."),
                      ("stop", "Stop after the current iteration, with a checkpoint (state 'stopped'); a queued run is taken off the "
                               "queue (state 'cancelled')."),
                      ("reset", "Elastic Reset now: policy <- EMA, EMA <- initial, then a weight sync (needs elastic_reset.enabled).")):
        app.post(f"/runs/{{run_id}}/{kind}", response_model=CommandAccepted, status_code=202, tags=["control"],
                 dependencies=auth, summary=doc, name=f"{kind}_run", responses=errors(404, 409))(
            _command_endpoint(kind, get_record, command, scheduler))

    @app.patch("/runs/{run_id}/params", response_model=CommandAccepted, status_code=202, tags=["control"], dependencies=auth,
               responses={409: {"model": Error, "description": "The run is over, or its config does not have this parameter "
                                                              "(e.g. kl_target with a fixed KL coefficient); the detail names it."},
                          **errors(404)})
    def set_params(body: ParamUpdate, run_id: str = RUN_ID):
        """Change parameters that are safe to change mid-run; the trainer applies them between iterations and
        records each change with its time and step (GET /runs/{id}/changes)."""
        rec = get_record(run_id)
        try:
            body.check_against(config_from_dump(rec["config"]))
        except ValueError as e:  # a well-formed request that this run's configuration cannot take: a conflict, not bad syntax
            raise HTTPException(409, str(e)) from None
        return command(run_id, "set", body.model_dump(exclude_none=True))

    @app.get("/runs/{run_id}/commands", response_model=list[CommandInfo], tags=["control"], dependencies=auth, responses=errors(404))
    def list_commands(run_id: str = RUN_ID) -> list[dict]:
        get_record(run_id)
        return store.commands(run_id)

    @app.get("/runs/{run_id}/changes", response_model=list[ParamChange], tags=["control"], dependencies=auth, responses=errors(404))
    def list_changes(run_id: str = RUN_ID) -> list[dict]:
        get_record(run_id)
        return store.changes(run_id)

    @app.get("/runs/{run_id}/metrics", response_model=list[MetricRow], tags=["metrics"], dependencies=auth, responses=errors(404))
    def metrics(run_id: str = RUN_ID,
                from_step: int | None = Query(None, ge=0, le=MAX_STEP, description="First step (inclusive)."),
                to_step: int | None = Query(None, ge=0, le=MAX_STEP, description="Last step (inclusive)."),
                count: int | None = Query(None, ge=1, le=100_000, description="At most this many rows.")) -> list[dict]:
        get_record(run_id)
        return store.metrics(run_id, start="-" if from_step is None else str(from_step),
                             end="+" if to_step is None else str(to_step), count=count)

    @app.get("/runs/{run_id}/metrics/stream", tags=["metrics"], dependencies=auth, response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"},
                                                               "example": 'id: 12-1\nevent: metrics\ndata: {"step": 12, "reward/gold_mean": 0.4}\n\n'}},
                              "description": "Server-sent events: 'state' at the start and on every change, 'metrics' per row, "
                                             "'end' when the run is over, 'error' if Redis goes away or the server shuts down "
                                             "({reason: redis | shutdown, detail, last_event_id}); ': keep-alive' comments."},
                        **errors(400, 404)})
    def stream(request: Request, run_id: str = RUN_ID,
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
        get_record(run_id)
        return StreamingResponse(metric_events(settings.redis_url, run_id, last, max_events, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/runs/{run_id}/report", response_class=HTMLResponse, tags=["results"], dependencies=auth,
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The HTML report."},
                        **errors(404, 409)})
    def report(run_id: str = RUN_ID):
        """The run's HTML report (written when the run ends; 409 before)."""
        rec = get_record(run_id)
        p = run_dir(rec) / "report.html" if rec.get("run_dir") else None
        if p is None or not p.exists():  # the run exists; its state does not have a report yet
            raise HTTPException(409, f"no report yet: run {run_id} is {rec.get('state')}; the report is written when the run ends")
        return FileResponse(p, media_type="text/html")

    @app.get("/runs/{run_id}/samples", response_model=SamplesPage, tags=["results"], dependencies=auth, responses=errors(404, 409))
    def samples(run_id: str = RUN_ID,
                step: int | None = Query(None, ge=0, le=MAX_STEP, description="The evaluated iteration (default: the latest)."),
                order: Literal["logged", "proxy", "proxy_low", "disagreement"] = Query(
                    "logged", description="logged; proxy = best first; proxy_low = worst first; disagreement = the samples the proxy "
                    "rates far above the gold first."),
                count: int | None = Query(None, ge=1, le=10_000, description="At most this many samples.")) -> SamplesPage:
        """The samples of one held-out evaluation (prompt, response, each proxy member, the aggregate, gold), as the run wrote them."""
        rec = get_record(run_id)
        if not rec.get("run_dir"):
            raise HTTPException(409, f"no samples yet: run {run_id} is {rec.get('state')} and has not evaluated")
        d = run_dir(rec)
        steps = sample_steps(d)
        if not steps:
            raise HTTPException(409, f"no samples yet: run {run_id} has not finished an evaluation")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            shown = ", ".join(map(str, steps[:10])) + (f", ... {steps[-1]}" if len(steps) > 10 else "")
            raise HTTPException(404, f"no evaluation at step {step} of run {run_id}; evaluated steps: {shown}")
        rows = [r for r in read_samples(d, step) if finite_number(r.get("proxy"))]
        gold = [r.get("gold") for r in rows]
        dis: list[float | None] = [None] * len(rows)
        if rows and all(finite_number(g) for g in gold):
            import numpy as np

            p, g = np.array([r["proxy"] for r in rows], float), np.array(gold, float)
            z = lambda a: (a - a.mean()) / (a.std() if a.std() > 0 else 1.0)  # noqa: E731
            dis = (z(p) - z(g)).tolist()
        items = [Sample(prompt=str(r.get("prompt", "")), response=str(r.get("response", "")), proxy=float(r["proxy"]),
                        proxy_members=[float(x) for x in r.get("proxy_members") or [] if finite_number(x)],
                        gold=float(r["gold"]) if finite_number(r.get("gold")) else None, disagreement=dv) for r, dv in zip(rows, dis)]
        if order == "proxy":
            items.sort(key=lambda x: -x.proxy)
        elif order == "proxy_low":
            items.sort(key=lambda x: x.proxy)
        elif order == "disagreement":
            items.sort(key=lambda x: -(x.disagreement if x.disagreement is not None else -1e300))
        return SamplesPage(run_id=run_id, step=step, steps=steps, order=order, total=len(items), samples=items[:count] if count else items)

    @app.get("/runs/{run_id}/checkpoints", response_model=list[Checkpoint], tags=["results"], dependencies=auth, responses=errors(404))
    def checkpoints(run_id: str = RUN_ID) -> list[Checkpoint]:
        rec = get_record(run_id)
        if not rec.get("run_dir"):
            return []  # not started yet: no checkpoints
        root = run_dir(rec) / "checkpoints"
        if not root.exists():
            return []
        out = []
        for p in sorted(root.glob("step-*")):
            if (p / "driver.json").exists():
                t = json.loads((p / "driver.json").read_text()).get("time")
                out.append(Checkpoint(name=p.name, step=int(p.name.split("-")[1]), path=str(p.relative_to(data_dir)), time=t))
        return out

    return app


def _command_endpoint(kind: str, get_record, command, scheduler: Scheduler):
    def endpoint(run_id: str = RUN_ID) -> CommandAccepted:
        rec = get_record(run_id)
        if kind == "reset" and not (rec.get("config") or {}).get("elastic_reset", {}).get("enabled"):
            raise HTTPException(409, "reset needs elastic_reset.enabled: true in the run's config (there is no EMA to reset to)")
        if kind == "stop" and rec.get("state") == "queued" and scheduler.cancel(run_id):
            return CommandAccepted(run_id=run_id, command_id="cancelled", type="stop", args={})
        return command(run_id, kind)

    endpoint.__name__ = f"{kind}_run"
    return endpoint
