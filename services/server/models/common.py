"""What every route shares: health, the error bodies and the OpenAPI `responses` for error codes."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ok": True, "redis": True}]})
    ok: bool
    redis: bool
    reason: str | None = Field(None, description="Why the service is not healthy (503).")


class Error(BaseModel):
    """The body of every error but 422."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "no run with id 'r-00000000'"}]})
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    field: str = Field(description="The dotted field, e.g. config.kl.coef.")
    msg: str
    type: str


class ValidationFailed(BaseModel):
    """The body of a 422: one entry per invalid field."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "message": "invalid request: config.kl.coef: Input should be greater than or equal to 0",
        "detail": [{"loc": ["body", "config", "kl", "coef"], "field": "config.kl.coef", "msg": "Input should be greater than or equal to 0",
                    "type": "greater_than_equal"}]}]})
    message: str
    detail: list[FieldError]


_WHY = {
    400: "Bad request (e.g. an unusable Last-Event-ID header).",
    401: "Missing bearer token.",
    403: "Wrong bearer token.",
    404: "No such run (or nothing of it to show yet).",
    409: "The run's state does not allow this.",
    413: "The request body is larger than the service accepts.",
    503: "Redis (or Ray job submission) is unavailable.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these status codes (401, 403, 413, 422 and 503 are added to every endpoint by the app)."""
    return {c: {"model": ValidationFailed if c == 422 else Error, "description": _WHY.get(c, "Validation error.")} for c in codes}
