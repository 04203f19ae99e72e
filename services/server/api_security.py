"""The service's gate: authentication and a body size limit, enforced before any endpoint reads a byte.

FastAPI reads and parses a request body before it runs an endpoint's dependencies, so a bearer-token
dependency alone lets an anonymous client make the server parse a 300 MB JSON body (7.5 s, +600 MB)
before it is told 401. This pure ASGI middleware runs first: a request to a protected path without the
right token is answered 401/403 from its headers alone, and every request's body is cut off at
``max_body`` bytes (413), whether it declares a Content-Length or streams chunks.

Public paths (no token): the health check, the web page (it asks for the token itself), its static
assets (``/static/...``) and the API's own documentation (``/docs``, ``/redoc``, ``/openapi.json``: the
schema holds no data and no secret, so a person can read it before having a token).

A request that has a body must say it is JSON (``Content-Type: application/json``): 415 otherwise,
before the body is read. ``HeadAsGet`` answers HEAD wherever GET is answered (headers, no body).
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

PUBLIC = frozenset({"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/",)
MISSING = ("missing bearer token: send 'Authorization: Bearer <token>' (the token is in env TETHER_API_TOKEN "
           "or <data_dir>/api_token of the server)")
WRONG = "invalid bearer token: it does not match the server's token"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """Raised from the wrapped ``receive``: an HTTPException, so FastAPI's body reader re-raises it as it is
    (any other exception there becomes a 400 "error parsing the body") and the app answers 413."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


async def _answer(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def check_token(header: str | None, token: str) -> tuple[int, str] | None:
    """None when ``header`` (the Authorization header) carries ``token``; else (401 or 403, why)."""
    if not header:
        return 401, MISSING
    scheme, _, cred = header.partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        return 401, MISSING
    if not secrets.compare_digest(cred.strip().encode(), token.encode()):
        return 403, WRONG
    return None


class Gate:
    """ASGI middleware: token check on every non-public path, then a body size limit for every request."""

    def __init__(self, app, *, token: str, max_body: int, public: frozenset[str] = PUBLIC):
        self.app, self.token, self.max_body, self.public = app, token, max_body, public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if scope["path"] not in self.public and not scope["path"].startswith(PUBLIC_PREFIXES):
            bad = check_token(headers.get(b"authorization", b"").decode("latin-1") or None, self.token)
            if bad is not None:
                return await _answer(send, bad[0], bad[1], [(b"www-authenticate", b"Bearer")] if bad[0] == 401 else None)
        too_large = f"the request body is larger than this service accepts ({self.max_body} bytes; tether serve --max-body-mb)"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await _answer(send, 400, f"Content-Length must be a number of bytes, got {declared[:40]!r}")
            if n > self.max_body:
                return await _answer(send, 413, too_large)
        if _has_body(headers, declared):
            ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
                return await _answer(send, 415, f"the request body must be JSON: send Content-Type: application/json (got "
                                                f"{ctype[:60] or 'no Content-Type'!r})")
        seen = 0
        started = False

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(too_large)
            return msg

        async def tracking(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited, tracking)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, too_large)


def _has_body(headers: dict[bytes, bytes], declared: bytes | None) -> bool:
    if declared is not None:
        return declared.strip() not in (b"", b"0")
    return b"transfer-encoding" in headers  # chunked: a body whatever its length


class HeadAsGet:
    """HEAD on a path with a GET route: run the GET, send its status and headers, no body (RFC 9110 9.3.2). The app is told
    the client went away as soon as the headers are out, so an event stream ends instead of running on unseen."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        done = False

        async def head_send(msg: dict) -> None:
            nonlocal done
            if msg["type"] == "http.response.start":
                await send(msg)
            elif msg["type"] == "http.response.body" and not done:
                done = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def head_receive() -> dict:
            if done:
                return {"type": "http.disconnect"}
            return await receive()

        await self.app({**scope, "method": "GET"}, head_receive, head_send)
