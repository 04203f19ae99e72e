"""`tether reward-server`: a Python reward function behind HTTP, speaking the protocol of tether's http scorers and of
OpenRLHF's remote reward servers.

    POST /get_reward  {"query": [prompt + response, ...], "prompts": [...], "responses": [...]?, "labels": [...]?, "metadata": [...]?}
                  ->  {"rewards": [float, ...]}
    GET  /health      {"status": "ok", "function": "..."}

``responses`` may be left out (OpenRLHF sends query and prompts only): each response is then its query without the prompt.
``metadata`` is a list of per-sample objects; their keys reach the function as keyword lists (``labels`` as ``label``). With
``--token-env VAR`` every request must carry ``Authorization: Bearer <$VAR>``.
"""
from __future__ import annotations

import hmac
import importlib
import math
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field


class RewardRequest(BaseModel):
    query: list[str] = Field(description="Whole texts: prompt + response.")
    prompts: list[Any] = Field(description="The prompts (strings, or chat messages lists).")
    responses: list[str] | None = Field(None, description="The responses; default: each query without its prompt.")
    labels: list[Any] | None = Field(None, description="One label per sample (OpenRLHF), passed as the keyword `label`.")
    metadata: list[dict] | None = Field(None, description="Per-sample metadata objects, passed as keyword lists.")


class RewardResponse(BaseModel):
    rewards: list[float]


def load_function(spec: str) -> Callable:
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise ValueError(f"the reward function must look like 'package.module:function', got {spec!r}")
    fn = getattr(importlib.import_module(mod), name, None)
    if not callable(fn):
        raise ValueError(f"{spec} is not a function of module {mod}")
    return fn


def make_app(function: str, *, token: str | None = None, max_batch: int = 65536) -> FastAPI:
    fn = load_function(function)
    app = FastAPI(title="tether reward server", description=__doc__)

    def _auth(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "function": function}

    @app.post("/get_reward", response_model=RewardResponse)
    def get_reward(body: RewardRequest, request: Request) -> RewardResponse:
        _auth(request)
        n = len(body.query)
        if n > max_batch:
            raise HTTPException(413, f"{n} samples in one request; at most {max_batch}")
        for name in ("prompts", "responses", "labels", "metadata"):
            v = getattr(body, name)
            if v is not None and len(v) != n:
                raise HTTPException(422, f"{name} has {len(v)} entries for {n} queries")
        prompts = body.prompts
        responses = body.responses if body.responses is not None else [
            q[len(p):] if isinstance(p, str) and q.startswith(p) else q for q, p in zip(body.query, prompts)]
        cols: dict[str, list] = {}
        if body.metadata:
            for k in sorted({k for m in body.metadata for k in m if k != "prompt"}):
                cols[k] = [m.get(k) for m in body.metadata]
        if body.labels is not None and "label" not in cols:
            cols["label"] = list(body.labels)
        try:
            out = [float(x) for x in fn(list(prompts), list(responses), **cols)]
        except Exception as e:  # noqa: BLE001 - the user's function: a 500 naming what it raised
            raise HTTPException(500, f"the reward function raised {type(e).__name__}: {e}") from None
        if len(out) != n or not all(math.isfinite(x) for x in out):
            raise HTTPException(500, f"the reward function returned {len(out)} values for {n} samples, or a non-finite one")
        return RewardResponse(rewards=out)

    return app


def serve(function: str, *, host: str, port: int, token: str | None = None) -> None:
    import uvicorn

    uvicorn.run(make_app(function, token=token), host=host, port=port, log_level="warning")


def reward_server_command(args) -> int:
    """The body of `tether reward-server` (services/cli.py parses its arguments): check the token variable and the function,
    then serve it until interrupted."""
    import os
    import sys

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            sys.exit(f"tether: --token-env {args.token_env}: the variable is not set")
    try:
        load_function(args.function)
    except (ImportError, ValueError) as e:
        sys.exit(f"tether: {e}")
    print(f"reward server: {args.function} on http://{args.host}:{args.port}/get_reward", flush=True)
    serve(args.function, host=args.host, port=args.port, token=token)
    return 0
