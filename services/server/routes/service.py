"""The service itself: health, the page, the API docs and the static assets (no token on any of them)."""
from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from services.server.api_models import Health
from services.server.deps import State

STATIC = Path(__file__).resolve().parents[1] / "static"
docs = APIRouter()  # the API docs and the page's charting library (before the static mounts: /static/vendor/... is served here)
router = APIRouter()  # health and the page


@cache
def package_folder(package: str) -> Path:
    return Path(importlib.import_module(package).__file__).resolve().parent


def mount_assets(app: FastAPI) -> None:
    """/static/docs (Swagger UI and ReDoc from fastapi-offline's copy) and /static (the page's files); Starlette mounts,
    which an APIRouter does not carry."""
    package_folder("plotly")  # found now, as the app is made, not on the first request for it
    app.mount("/static/docs", StaticFiles(directory=package_folder("fastapi_offline") / "static"), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


@docs.get("/docs", include_in_schema=False)
def swagger_docs():  # Swagger UI from fastapi-offline's copy (no CDN: an offline cluster gets the docs too)
    return get_swagger_ui_html(openapi_url="/openapi.json", title="tether API", swagger_js_url="/static/docs/swagger-ui-bundle.js",
                               swagger_css_url="/static/docs/swagger-ui.css", swagger_favicon_url="/static/docs/favicon.png",
                               oauth2_redirect_url="/docs/oauth2-redirect")


@docs.get("/docs/oauth2-redirect", include_in_schema=False)
def swagger_redirect():
    return get_swagger_ui_oauth2_redirect_html()


@docs.get("/redoc", include_in_schema=False)
def redoc_docs():
    return get_redoc_html(openapi_url="/openapi.json", title="tether API", redoc_js_url="/static/docs/redoc.standalone.js",
                          redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)


@docs.get("/static/vendor/plotly.min.js", include_in_schema=False)
def plotly_asset():  # the page's charting library, from the plotly package itself
    return FileResponse(package_folder("plotly") / "package_data" / "plotly.min.js", media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/healthz", response_model=Health, tags=["service"], responses={503: {"model": Health, "description": "Redis is unreachable."}})
def healthz(st: State):
    try:
        st.store.r.ping()
    except Exception as e:  # noqa: BLE001 - health reports, never raises
        why = st.settings.redis_problem and st.settings.redis_problem()
        return JSONResponse(status_code=503, content=Health(ok=False, redis=False, reason=f"Redis is unreachable ({type(e).__name__})"
                                                            + (f": {why}" if why else "")).model_dump())
    return Health(ok=True, redis=True)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page():
    return FileResponse(STATIC / "index.html")
