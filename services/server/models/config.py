"""A run's config as the service accepts it (services/server/api_models.py re-exports it): the one schema,
``learner.config.TetherConfig``, narrowed for a service: paths stay inside the service's data directory and model names
cannot point at local folders; and the limits of what a config may ask for (`tether serve --limit`).
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from learner.config import GuardConfig, TetherConfig

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


SCORER_TOKEN_PREFIX = "TETHER_SCORER_"
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow")


DATA_REF = "data:"  # a model or dataset the operator put inside the service's data directory: data:<relative path>


def _first_part(path: str) -> str:
    """The first folder a relative path names ('' for the directory itself): what the service's own-files rules look at."""
    return next((p for p in re.split(r"[\\/]", path) if p not in ("", ".")), "")


def _data_ref(name: str, field: str) -> str:
    rel = name[len(DATA_REF):]
    if not rel or "\x00" in rel or len(rel) > 1024:
        raise ValueError(f"{field}: data:<path> needs a relative path (at most 1024 characters, no NUL byte) inside the service's data directory")
    _inside(rel, field)
    first = _first_part(rel)
    if first in SERVICE_OWN:
        raise ValueError(f"{field}: data:<path> may not point at the service's own files ({', '.join(SERVICE_OWN)}), got {name!r}")
    return name


def _hub_dataset(name: str, field: str) -> str:
    """A Hugging Face hub dataset name, or ``data:<path>`` inside the service's data directory (no other local file or folder)."""
    if name.startswith(DATA_REF):
        return _data_ref(name, field)
    if not _HUB_NAME.match(name) or ".." in name or name.lower().endswith(_DATA_SUFFIXES):
        raise ValueError(f"{field} must be a hub dataset name like 'org/dataset', or data:<path> inside the service's data directory "
                         f"(no other local file or folder), got {name!r}")
    return name


def _model_name(name: str, field: str) -> str:
    """A model hub name, or ``data:<path>`` inside the service's data directory."""
    if name.startswith(DATA_REF):
        return _data_ref(name, field)
    if not _HUB_NAME.match(name) or ".." in name:
        raise ValueError(f"{field} must be a model hub name like 'org/model', or data:<folder> inside the service's data directory "
                         f"(other local paths are refused), got {name!r}")
    return name


def data_refs(cfg) -> list[tuple[str, object, str]]:
    """(dotted field, the section holding it, attribute) of every model or dataset name in a config."""
    out = [("policy.name_or_path", cfg.policy, "name_or_path"), ("gold.name_or_path", cfg.gold, "name_or_path"),
           ("proxy.name_or_path", cfg.proxy, "name_or_path")]
    if cfg.gold.scorer is not None:
        out.append(("gold.scorer.name_or_path", cfg.gold.scorer, "name_or_path"))
    out += [(f"proxy.scorers.{i}.name_or_path", s, "name_or_path") for i, s in enumerate(cfg.proxy.scorers)]
    if cfg.task.data is not None:
        out += [("task.data.path", cfg.task.data, "path"), ("task.data.heldout_path", cfg.task.data, "heldout_path")]
    if cfg.proxy.preferences is not None:
        out.append(("proxy.preferences.path", cfg.proxy.preferences, "path"))
    return out


def local_shadows(cfg, roots) -> list[tuple[str, str]]:
    """(field, message) for each model or dataset name of ``cfg`` that is not ``data:`` but names an existing file or folder under
    one of ``roots`` (the server's working directory, its data directory): from_pretrained and load_dataset would read that local
    path, not the hub."""
    from pathlib import Path

    out = []
    for field, sec, attr in data_refs(cfg):
        value = getattr(sec, attr)
        if not isinstance(value, str) or value.startswith(DATA_REF):
            continue
        for root in roots:
            try:
                hit = (Path(root) / value).exists()
            except (OSError, ValueError):
                hit = True
            if hit:
                out.append((f"config.{field}", f"{value!r} names a file or folder on the server, not a hub name; a model or dataset the "
                                               "operator put in the service's data directory is data:<path>"))
                break
    return out


def resolve_data_refs(cfg, data_dir) -> list[tuple[str, str]]:
    """Replace each ``data:<path>`` of ``cfg`` by its absolute path inside ``data_dir`` (in place); (field, message) for each
    that does not exist or leaves the directory (a symbolic link out of it)."""
    from pathlib import Path

    root, errors = Path(data_dir).resolve(), []
    for field, sec, attr in data_refs(cfg):
        value = getattr(sec, attr)
        if not isinstance(value, str) or not value.startswith(DATA_REF):
            continue
        try:
            target = (root / value[len(DATA_REF):]).resolve()
        except (OSError, ValueError, RuntimeError) as e:  # a symlink loop, an unreadable path
            errors.append((f"config.{field}", f"{value!r} cannot be resolved ({type(e).__name__})"))
            continue
        if not target.is_relative_to(root):
            errors.append((f"config.{field}", f"{value!r} leaves the service's data directory"))
        elif not target.exists():
            errors.append((f"config.{field}", f"{value!r}: nothing at {value[len(DATA_REF):]!r} in the service's data directory"))
        else:
            setattr(sec, attr, str(target))
    return errors


SERVICE_OWN = ("redis", "service", "api_token")  # the service's own files in its data directory: no run reads or writes there
RUNS = "runs"  # <data dir>/runs/<run id>: each run's folder, chosen by the service


def _inside(value: str, field: str) -> str:
    """A path relative to the service's data directory that cannot leave it."""
    if not value.strip() or "\x00" in value:
        raise ValueError(f"{field} must be a non-empty relative path without NUL bytes, got {value!r}")
    if value.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{field} must be a relative path inside the service's data directory, got {value!r}")
    if any(part == ".." for part in re.split(r"[\\/]", value)):
        raise ValueError(f"{field} must not contain '..' (it must stay inside the service's data directory), got {value!r}")
    return value


class ServiceRunConfig(TetherConfig):
    """A run's config as the service accepts it: TetherConfig, with paths kept inside the data directory,
    model names restricted to hub names (no local folders), and no variants (submit each as its own run).
    The gold-free guard is on by default here (``guard.enabled: true``, action alert): a deployment has no gold."""

    guard: GuardConfig = Field(default_factory=lambda: GuardConfig(enabled=True), json_schema_extra={"default": {"enabled": True}},
                               description="The gold-free guard (on by default for service runs: a deployment has no gold).")

    @field_validator("guard")
    @classmethod
    def _guard_on(cls, v: GuardConfig) -> GuardConfig:
        """On unless the config says ``enabled``: a guard section that sets only its action or threshold keeps it on."""
        if "enabled" not in v.model_fields_set:
            return v.model_copy(update={"enabled": True})
        return v

    @field_validator("data_dir")
    @classmethod
    def _paths(cls, v: str, info) -> str:
        _inside(v, info.field_name)
        first = _first_part(v)
        if not first or first in SERVICE_OWN or first == RUNS:
            raise ValueError(f"{info.field_name} must name a folder of its own inside the service's data directory, not the directory itself, "
                             f"its run folders ({RUNS}/) or the service's own files ({', '.join(SERVICE_OWN)}); got {v!r}")
        return v

    @field_validator("runs_dir")
    @classmethod
    def _runs_dir(cls, v: str) -> str:
        if v != RUNS:
            raise ValueError(f"runs_dir is chosen by the service: each run is written to <data dir>/{RUNS}/<run id>; leave it out "
                             f"(or {RUNS!r}), got {v[:200]!r}")
        return v

    @field_validator("variants")
    @classmethod
    def _no_variants(cls, v: dict) -> dict:
        if v:
            raise ValueError("a service run is one config: submit each variant as its own run")
        return v

    @field_validator("policy", "gold", "proxy")
    @classmethod
    def _names(cls, v, info):
        name = getattr(v, "name_or_path", None)
        if name is not None:
            _model_name(name, f"{info.field_name}.name_or_path")
        return v

    @field_validator("task")
    @classmethod
    def _dataset(cls, v):
        d = v.data
        for field, name in (("path", d and d.path), ("heldout_path", d and d.heldout_path)):
            if name is not None:
                _hub_dataset(name, f"task.data.{field}")
        return v

    @model_validator(mode="after")
    def _scorers(self) -> "ServiceRunConfig":
        specs = [("gold.scorer", self.gold.scorer)] + [(f"proxy.scorers[{i}]", s) for i, s in enumerate(self.proxy.scorers)]
        for where, s in specs:
            if s is None:
                continue
            if s.kind == "function":
                raise ValueError(f"{where}: a function scorer would run code in the service's workers; the service accepts "
                                 "hf_reward_model, http and profanity scorers (serve a function with `tether reward-server`, kind http)")
            if s.name_or_path is not None:
                _model_name(s.name_or_path, f"{where}.name_or_path")
            if s.token_env is not None and not s.token_env.startswith(SCORER_TOKEN_PREFIX):
                raise ValueError(f"{where}.token_env must name a variable starting with {SCORER_TOKEN_PREFIX} (the ones the operator set "
                                 f"for scorers); other variables of the service are not sent anywhere; got {s.token_env!r}")
        if self.proxy.preferences is not None:
            _hub_dataset(self.proxy.preferences.path, "proxy.preferences.path")
        return self

    @field_validator("tracking")
    @classmethod
    def _trackers(cls, v):
        """Where a run's metrics and config go is the operator's choice: an MLflow URI or a wandb folder chosen by a client would
        send them to any host or write them anywhere."""
        if v.mlflow.tracking_uri is not None:
            raise ValueError("tracking.mlflow.tracking_uri is chosen by the service (tether serve --mlflow-uri; without it, a local "
                             "store in the run's folder); leave it out")
        if v.wandb.dir is not None:
            raise ValueError("tracking.wandb.dir is chosen by the service (the run's folder); leave it out")
        return v

    @field_validator("runtime")
    @classmethod
    def _cluster(cls, v):
        if v.ray_address is not None:
            raise ValueError("runtime.ray_address cannot be set through the API: the service decides which Ray cluster runs its jobs "
                             "(tether serve --ray-address); leave it out")
        return v


# What a submitted config may ask for, as dotted field -> largest accepted value. `tether serve --limit
# FIELD=MAX` changes one; the defaults keep one run within what a small cluster can serve in hours.
DEFAULT_LIMITS: dict[str, float] = {
    "train.iterations": 5_000,
    "train.eval_prompts": 1_024,
    "generation.max_new_tokens": 512,
    "ppo.batch_size": 1_024, "fdpg.batch_size": 1_024, "quark.batch_size": 1_024,
    "ppo.epochs": 16,
    "quark.steps_per_iteration": 256,
    "runtime.kv_cache_gib": 16,
    "runtime.rollout_actors": 16,
    "runtime.object_store_mb": 8_192,
    "policy.pretrain_tokens": 20_000_000,
    "policy.n_layer": 48, "policy.hidden": 4_096, "policy.context": 4_096,
    "proxy.n_pairs": 20_000, "proxy.n_eval_pairs": 5_000, "proxy.epochs": 20,
    "reference.sft_tokens": 5_000_000,
    "task.max_reviews": 25_000,
    # what one actor of a role may ask for (a run that cannot fit is refused by the admission check where the cluster is known;
    # without Ray, a number like 1e300 would otherwise wait at the head of the strict queue for ever)
    **{f"runtime.{role}.{res}": cap for role in ("rollout", "reward", "gold", "learner") for res, cap in (("num_cpus", 1024), ("num_gpus", 64))},
}


def parse_limits(items: list[str]) -> dict[str, float]:
    """DEFAULT_LIMITS with ``FIELD=MAX`` overrides (the --limit flags of `tether serve`)."""
    out = dict(DEFAULT_LIMITS)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULT_LIMITS:
            raise ValueError(f"--limit takes FIELD=MAX with FIELD one of {', '.join(sorted(DEFAULT_LIMITS))}; got {item!r}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"--limit {key}: the maximum must be a number, got {value!r}") from None
        if not v > 0 or v != v or v == float("inf"):
            raise ValueError(f"--limit {key}: the maximum must be a finite number > 0, got {value!r}")
        out[key] = v
    return out


def over_limits(cfg: TetherConfig, limits: dict[str, float]) -> list[tuple[str, str]]:
    """(field, message) for every field of ``cfg`` above its limit."""
    out = []
    for dotted, cap in limits.items():
        value: Any = cfg
        for part in dotted.split("."):
            value = getattr(value, part, None)
        if isinstance(value, (int, float)) and value > cap:
            out.append((f"config.{dotted}", f"{value:g} is above this service's limit {cap:g} (the operator sets it with "
                                            f"`tether serve --limit {dotted}=MAX`)"))
    return out
