"""The parameters a client may change while a run is going: the body of ``PATCH /runs/{id}/params`` (the server
validates it) and of the ``set`` command the trainer applies (services/driver/control.py)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _no_nulls(schema: dict) -> None:
    """The JSON schema says what the validators enforce: each field optional but never null; at least one given."""
    for prop in schema["properties"].values():
        branch = next(b for b in prop.pop("anyOf") if b.get("type") != "null")
        prop.update(branch)
        prop.pop("default", None)
    schema["minProperties"] = 1
    schema["examples"] = [{"kl_coef": 0.02}, {"kl_target": 4.0, "eval_every": 5}]


class ParamUpdate(BaseModel):
    """Parameters that are safe to change while a run is going. Give at least one."""

    # strict: "0.1" or true is not a number here (a client's type error is refused, never coerced)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, json_schema_extra=lambda s: _no_nulls(s))

    kl_coef: float | None = Field(None, ge=0, description="KL penalty beta from now on (the adaptive controller continues from it).")
    kl_target: float | None = Field(None, gt=0, description="Target KL (nats per sequence) of the adaptive controller; kl.mode must be 'adaptive'.")
    uwo_lambda: float | None = Field(None, ge=0, description="UWO lambda of the proxy ensemble; ensemble.aggregation must be 'uwo'.")
    eval_every: int | None = Field(None, ge=1, description="Gold evaluation on held-out prompts every N iterations.")
    guard_action: Literal["alert", "stop", "reset"] | None = Field(
        None, description="What the gold-free guard does at its next alarm (alert, stop, reset); guard.enabled must be true.")

    @model_validator(mode="before")
    @classmethod
    def _integral(cls, data: Any) -> Any:
        """JSON Schema's integer includes 3.0 (strict mode alone would refuse it for eval_every); strings and booleans stay refused."""
        if isinstance(data, dict):
            return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in data.items()}
        return data

    @field_validator("kl_coef", "kl_target", "uwo_lambda", "eval_every", "guard_action", mode="before")
    @classmethod
    def _given(cls, v, info):
        if v is None:  # leaving a field out keeps it; an explicit null would be ambiguous
            raise ValueError(f"{info.field_name}: leave it out to keep the current value (null is not accepted)")
        return v

    @model_validator(mode="after")
    def _some(self) -> "ParamUpdate":
        if not self.model_dump(exclude_none=True):
            raise ValueError("give at least one of kl_coef, kl_target, uwo_lambda, eval_every, guard_action")
        return self

    def check_against(self, cfg) -> None:
        """Raise ValueError naming the field when the run's config does not allow this change."""
        if (self.kl_coef is not None or self.kl_target is not None) and cfg.algorithm != "ppo":
            raise ValueError(f"kl_coef/kl_target: apply only to algorithm 'ppo'; this run uses '{cfg.algorithm}'")
        if self.kl_target is not None and cfg.kl.mode != "adaptive":
            raise ValueError("kl_target: applies only to kl.mode 'adaptive'; this run uses a fixed beta (change kl_coef instead)")
        if self.uwo_lambda is not None and cfg.ensemble.aggregation != "uwo":
            raise ValueError(f"uwo_lambda: applies only to ensemble.aggregation 'uwo'; this run uses '{cfg.ensemble.aggregation}'")
        if self.guard_action is not None and not cfg.guard.enabled:
            raise ValueError("guard_action: this run's guard is off (guard.enabled: false); its signals are logged but it takes no action")
