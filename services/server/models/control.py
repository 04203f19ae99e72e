"""The bodies of the control routes (commands, live parameter changes)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.state.params import ParamUpdate  # noqa: F401 - re-exported: the PATCH /runs/{id}/params body



class CommandAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"run_id": "r-1a2b3c4d", "command_id": "1795500100123-0", "type": "pause", "args": {}}]})
    run_id: str
    command_id: str = Field(description="Redis stream id of the command; its acknowledgement appears in GET /runs/{id}/commands.")
    type: Literal["pause", "resume", "stop", "reset", "set"]
    args: dict[str, Any] = Field(default_factory=dict)


class CommandInfo(BaseModel):
    id: str
    type: str
    args: dict[str, Any]
    created: float
    ack: dict[str, Any] | None = Field(None, description="{ok, step, result, time} once the trainer applied (or refused) it.")


class ParamChange(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "12-1", "param": "kl_coef", "old": 0.05, "new": 0.02, "step": 12,
                                                               "time": 1795500100.5, "command": "1795500100123-0"}]})
    id: str
    param: str
    old: Any
    new: Any
    step: int
    time: float
    command: str
