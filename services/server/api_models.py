"""Request and response bodies of the REST API (services/server/api.py), with examples for the OpenAPI schema.

They live one module per resource in services/server/models/ (config: the run config a service accepts and its limits;
runs, control, results: the routes' bodies; common: health and errors); this module gathers them under one name.
"""
from __future__ import annotations

from services.server.models.common import Error, FieldError, Health, ValidationFailed, errors
from services.server.models.config import (DATA_REF, DEFAULT_LIMITS, RUNS, SCORER_TOKEN_PREFIX, SERVICE_OWN, ServiceRunConfig, data_refs,
                                           local_shadows, over_limits, parse_limits, resolve_data_refs)
from services.server.models.control import CommandAccepted, CommandInfo, ParamChange, ParamUpdate
from services.server.models.results import Checkpoint, MetricRow, Sample, SamplesPage
from services.server.models.runs import (MAX_CONFIG_VALUES, PRESETS, RUN_EXAMPLE, Preset, Run, RunCreate, RunsPage, RunSummary,
                                         count_values, integral_floats_as_ints)

__all__ = [
    "Error", "FieldError", "Health", "ValidationFailed", "errors",
    "DATA_REF", "DEFAULT_LIMITS", "RUNS", "SCORER_TOKEN_PREFIX", "SERVICE_OWN", "ServiceRunConfig", "data_refs", "local_shadows",
    "over_limits", "parse_limits", "resolve_data_refs",
    "CommandAccepted", "CommandInfo", "ParamChange", "ParamUpdate",
    "Checkpoint", "MetricRow", "Sample", "SamplesPage",
    "MAX_CONFIG_VALUES", "PRESETS", "RUN_EXAMPLE", "Preset", "Run", "RunCreate", "RunsPage", "RunSummary", "count_values",
    "integral_floats_as_ints",
]
