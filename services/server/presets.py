"""Named starting configs for runs created through the service (POST /runs {"preset": NAME, "config": overrides}).

The built-in presets are the project's own comparisons on the embedded IMDB task, each a valid service run;
`tether serve --presets DIR` adds every ``DIR/*.yaml`` (the file's stem is the name; a leading comment
block is its description). Overrides are merged into the preset key by key (``merge``): a nested section
is merged, any other value replaces the preset's.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

_PPO = {"ppo": {"lr": 5.0e-5, "batch_size": 64, "minibatch_size": 16, "epochs": 4},
        "train": {"iterations": 40, "eval_every": 2, "eval_prompts": 64}, "runtime": {"checkpoint_every": 10}}

BUILTIN: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("A smoke run on a tiny IMDB task: every artefact built and 3 PPO iterations in about a minute.", {
        "name": "tiny", "task": {"max_reviews": 2000, "heldout_fraction": 0.2}, "tokenizer": {"vocab_size": 512},
        "policy": {"n_layer": 2, "hidden": 64, "n_head": 2, "intermediate": 128, "context": 64, "pretrain_tokens": 60000,
                   "batch_size": 16, "lr": 3.0e-3, "committed_checkpoint": False},
        "gold": {"epochs": 4, "lr": 2.0e-3, "batch_size": 16},
        "proxy": {"n_members": 2, "n_pairs": 96, "n_eval_pairs": 48, "epochs": 1, "batch_size": 16, "n_layer": 1, "max_len": 48},
        "generation": {"max_new_tokens": 12}, "ppo": {"batch_size": 8, "minibatch_size": 4, "epochs": 2, "lr": 1.0e-3},
        "train": {"iterations": 3, "eval_every": 1, "eval_prompts": 8}}),
    "ppo-kl": ("PPO with a fixed KL penalty (beta 0.05) on the IMDB task: the default comparison's baseline (configs/default.yaml).",
               {"name": "ppo-kl", **_PPO, "kl": {"mode": "fixed", "coef": 0.05}}),
    "ppo-adaptive-kl": ("PPO with the adaptive KL controller (Ziegler et al.) driving KL from pi_0 toward 6 nats.",
                        {"name": "ppo-adaptive-kl", **_PPO, "kl": {"mode": "adaptive", "coef": 0.05, "target": 6.0}}),
    "elastic-reset": ("PPO + Elastic Reset (Noukhovitch et al. 2023): a small KL penalty, EMA eta 0.995, reset every 17 iterations.",
                      {"name": "elastic-reset", **_PPO, "kl": {"mode": "fixed", "coef": 0.01},
                       "elastic_reset": {"enabled": True, "eta": 0.995, "every": 17}}),
    "grpo": ("GRPO (Shao et al. 2024) on PPO's learner: 8 samples per prompt, group-normalised advantages, no value network, "
             "the KL (k3, beta 0.01) in the loss.",
             {"name": "grpo", **_PPO, "generation": {"n_per_prompt": 8}, "ppo": {**_PPO.get("ppo", {}), "advantage": "grpo"},
              "kl": {"mode": "fixed", "coef": 0.01, "placement": "loss", "estimator": "k3"}}),
    "ensemble-uwo": ("PPO against a 4-member proxy ensemble aggregated by UWO (Coste et al. 2024, lambda 0.1).",
                     {"name": "ensemble-uwo", **_PPO, "kl": {"mode": "fixed", "coef": 0.01}, "proxy": {"n_members": 4},
                      "ensemble": {"aggregation": "uwo", "uwo_lambda": 0.1}}),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: dicts on both sides are merged recursively, anything else in ``over`` replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _description(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(x for x in lines if x)


class Presets:
    """The presets one service offers: the built-in ones plus an operator's folder of YAML files."""

    def __init__(self, folder: str | Path | None = None):
        self.items: dict[str, tuple[str, dict[str, Any]]] = dict(BUILTIN)
        if folder is not None:
            self.add_folder(Path(folder))

    def add_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise ValueError(f"--presets must be a folder of YAML configs, got {str(folder)!r} (not a folder)")
        for p in sorted(folder.glob("*.yaml")):
            if not _NAME.match(p.stem):
                raise ValueError(f"preset file {p.name}: its name must be letters, digits, '_', '.', '-' (at most 64)")
            text = p.read_text()
            cfg = yaml.safe_load(text) or {}
            if not isinstance(cfg, dict):
                raise ValueError(f"preset file {p}: a config is a mapping of sections, got {type(cfg).__name__}")
            from learner.config import ConfigError, TetherConfig

            try:  # YAML's own types ('3e-3' is a string there) read once, by the schema: the API's strict check then sees numbers
                cfg = TetherConfig.model_validate(cfg).model_dump(mode="json", exclude_unset=True)
            except (ValueError, ConfigError) as e:
                raise ValueError(f"preset file {p}: not a valid config: {e}") from None
            self.items[p.stem] = (_description(text) or f"{p.name} of the operator's presets", cfg)

    def names(self) -> list[str]:
        return list(self.items)

    def config(self, name: str) -> dict[str, Any]:
        if name not in self.items:
            raise KeyError(name)
        return copy.deepcopy(self.items[name][1])

    def listing(self) -> list[dict[str, Any]]:
        return [{"name": n, "description": d, "config": copy.deepcopy(c)} for n, (d, c) in self.items.items()]
