"""`tether serve`: the REST API over Redis (run records, metrics, commands), an admission queue, and Ray's job submission.

Every endpoint except GET /healthz, the page and the API docs needs ``Authorization: Bearer <token>``
(401 when missing, 403 when wrong), checked before the body is read (services/server/api_security.py). The
token comes from env TETHER_API_TOKEN, else from ``<data_dir>/api_token`` (generated once, mode 0600).
A run's config is validated (services/server/api_models.ServiceRunConfig and the service's limits), its paths
resolved inside the data directory, stored in Redis and in ``<data_dir>/service/<run_id>/tether.yaml``,
and queued; the scheduler (services/server/scheduler.py) admits it when the cluster has room, as a Ray job
running ``tether prepare <yaml> && tether train <yaml> --run-id <id> --redis-url <url>``.
While Redis is unreachable every endpoint answers 503 with a JSON reason, and so does /healthz.
create_app builds the app from the routes (services/server/routes/, one module per resource) and the state they share
(services/server/deps.py, handed to them as a FastAPI dependency).
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from pathlib import Path

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.server.api_models import PRESETS, errors
from services.server.api_schema import truthful_openapi
from services.server.api_security import Gate, HeadAsGet
from services.server.deps import AppState
from services.server.presets import Presets
from services.server.routes import control, metrics, results, runs, service
from services.server.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app", "load_or_create_token"]
log = logging.getLogger(__name__)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


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


def _install_error_handlers(app: FastAPI, settings: ServiceSettings) -> None:
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


def create_app(settings: ServiceSettings) -> FastAPI:
    st = AppState.create(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        stop = threading.Event()
        th = threading.Thread(target=st.scheduler.run_forever, args=(stop,), kwargs={"poll_s": settings.scheduler_poll_s},
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
    app.add_middleware(_PresetsScope, presets=st.presets)
    app.add_middleware(HeadAsGet)
    app.add_middleware(Gate, token=settings.token, max_body=settings.max_body_bytes)
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                       allow_methods=["GET", "HEAD", "POST", "PATCH"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                       expose_headers=["Retry-After"], max_age=600)
    app.openapi = truthful_openapi(app, settings.limits)
    app.state.tether = st  # what the routes' State dependency hands them (services/server/deps.py)
    app.state.store, app.state.settings, app.state.scheduler, app.state.presets = st.store, settings, st.scheduler, st.presets
    _install_error_handlers(app, settings)

    # In this order (routes are matched in it, and the OpenAPI document lists them in it): /static/vendor/... before the
    # /static mount; then /presets, the service's own routes and the runs' routes.
    app.include_router(service.docs)
    service.mount_assets(app)
    app.include_router(runs.presets)
    app.include_router(service.router)
    for module in (runs, control, metrics, results):
        app.include_router(module.router)
    return app
