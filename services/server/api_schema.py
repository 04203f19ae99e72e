"""The OpenAPI document, made to tell the truth about what the server does.

FastAPI's generated document needs three corrections, applied once when it is first served:
- error bodies are JSON on every route, also on routes whose success is HTML (the report) or an event
  stream; FastAPI would file them under the route's own media type;
- the service's limits (`tether serve --limit`) are part of the contract: each limited config field gets
  its ``maximum``, so a client (or a fuzzer) can see what will be accepted;
- the metrics stream documents its events (``event``, ``data``, ``id``), as SSE clients parse them;
- OpenAPI links from the run POST /runs created to every operation on ``/runs/{run_id}...`` (its ``id``
  as ``run_id``): what a client does next, and what schemathesis' stateful phase follows.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event: 'state' (data: {state}, at the start and on every change), 'metrics' (data: a MetricRow "
                   "as JSON, id: its stream id), 'end' (data: {state}) or 'error' (data: {detail}).",
    "properties": {"event": {"type": "string", "enum": ["state", "metrics", "end", "error"]}, "data": {"type": "string"},
                   "id": {"type": "string"}},
}


def _resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _cap(node: dict, value: float) -> None:
    """Set ``maximum`` on a number schema, or on the number branches of an anyOf (optional fields)."""
    branches = node.get("anyOf", [node])
    for b in branches:
        if b.get("type") in ("integer", "number"):
            b["maximum"] = min(b.get("maximum", value), value)


def add_limits(doc: dict, root: str, limits: dict[str, float]) -> None:
    for dotted, value in limits.items():
        node = doc["components"]["schemas"][root]
        *sections, name = dotted.split(".")
        for sec in sections:
            node = _resolve(doc, node["properties"][sec])
        _cap(node["properties"][name], value)
        node["properties"][name]["description"] = (node["properties"][name].get("description", "") +
                                                   f" At most {value:g} on this service (tether serve --limit {dotted}=MAX).").strip()


def add_run_links(doc: dict) -> None:
    created = doc["paths"]["/runs"]["post"]["responses"]["201"]
    links = {}
    for path, methods in doc["paths"].items():
        if not path.startswith("/runs/{run_id}"):
            continue
        for method, op in methods.items():
            name = f"{method.upper()} {path.removeprefix('/runs/{run_id}') or '/'}".replace("/", "_").replace(" ", "").strip("_")
            links[name or "run"] = {"operationId": op["operationId"], "parameters": {"run_id": "$response.body#/id"},
                                    "description": f"{method.upper()} {path} of the created run."}
    created["links"] = links


def truthful_openapi(app: FastAPI, limits: dict[str, float]):
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, methods in doc["paths"].items():
            for op in methods.values():
                for code, resp in op.get("responses", {}).items():
                    if code.isdigit() and int(code) >= 400 and "content" in resp:
                        schema = next(iter(resp["content"].values()))["schema"]
                        resp["content"] = {"application/json": {"schema": schema}}
                if path.endswith("/metrics/stream"):
                    op["responses"]["200"]["content"]["text/event-stream"]["schema"] = SSE_EVENT
        add_limits(doc, "ServiceRunConfig", limits)
        add_run_links(doc)
        app.openapi_schema = doc
        return doc

    return openapi
