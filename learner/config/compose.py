"""The one way configs are composed: a base mapping plus layers (a preset or YAML file, then `--set`
overrides, a variant, a sweep's `set`, method, grid and seed), merged in order.

A layer that switches ``algorithm`` drops the base's sections of the other algorithms (they were
written for the base's method); a layer that sets such a section itself is still rejected by the
schema. Layers are plain mappings; `validate_dict` turns the result into a TetherConfig.
"""
from __future__ import annotations

import copy
from typing import Any, get_args

import yaml

from learner.config.base import ConfigError
from learner.types import Algorithm

ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
# Sections that configure one algorithm only; setting one for another algorithm is an error.
ALGORITHM_SECTIONS = {"ppo": ("ppo", "kl", "elastic_reset"), "fdpg": ("fdpg",), "quark": ("quark",)}


def without_other_algorithms(data: dict, algorithm: str) -> dict:
    """``data`` (a config dict) without the sections of algorithms other than ``algorithm`` (a shallow copy)."""
    other = {sec for a, secs in ALGORITHM_SECTIONS.items() if a != algorithm for sec in secs}
    return {k: v for k, v in data.items() if k not in other}


def deep_merge(base: dict, over: dict) -> dict:
    """Merge ``over`` into ``base`` in place (mappings recursively, anything else replaced) and return ``base``."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def nest(flat: dict[str, Any]) -> dict:
    """{'kl.coef': 0.05} -> {'kl': {'coef': 0.05}} (later keys deep-merge into earlier ones)."""
    out: dict = {}
    for key, value in flat.items():
        node: dict = {}
        inner = node
        parts = str(key).split(".")
        for p in parts[:-1]:
            inner = inner.setdefault(p, {})
        inner[parts[-1]] = copy.deepcopy(value)
        deep_merge(out, node)
    return out


def parse_overrides(items: list[str] | None) -> dict:
    """Command-line ``section.field=value`` items (values parsed as YAML) as one nested layer; later items win."""
    flat: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override '{item}' must look like section.field=value (e.g. train.iterations=5)")
        try:
            flat[key] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML: {e}") from None
    return nest(flat)


def compose_dict(base: dict, *layers: dict) -> dict:
    """``base`` with ``layers`` merged over it in order (nothing passed in is modified).

    The algorithm is the last one a layer sets, else the base's; when that differs from the base's, the
    base's sections of the other algorithms are dropped before merging.
    """
    base_algo = base.get("algorithm", "ppo")
    algo = next((layer["algorithm"] for layer in reversed(layers) if "algorithm" in layer), base_algo)
    out = copy.deepcopy(base)
    if algo != base_algo and algo in ALGORITHM_SECTIONS:
        out = without_other_algorithms(out, algo)
    for layer in layers:
        deep_merge(out, copy.deepcopy(layer))
    return out
