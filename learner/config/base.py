"""The base of every config section, and the one error type with its readable message."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Unknown fields are rejected (``extra="forbid"``) so a typo never silently falls back to a default."""

    # allow_inf_nan=False: JSON 1e309 parses to inf; a non-finite coefficient is refused here, not at sampling time.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config that cannot be used: the message names the field and what is accepted."""


def format_errors(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per error: the dotted field, what is wrong, and for an unknown field the accepted ones."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = root
            for p in e["loc"][:-1]:
                f = parent.model_fields.get(str(p))
                ann = getattr(f, "annotation", None) if f else None
                parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
                if parent is None:
                    break
            allowed = ", ".join(sorted(parent.model_fields)) if parent else "see the schema"
            msg = f"unknown field; accepted fields here: {allowed}"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)
