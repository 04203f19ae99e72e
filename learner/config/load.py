"""Reading configs: a preset name from configs/ or a YAML file, composed with `--set` overrides."""
from __future__ import annotations

from pathlib import Path

import yaml

from learner.config.base import ConfigError
from learner.config.compose import compose_dict, parse_overrides
from learner.config.run import TetherConfig, validate_dict

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"


def read_config_file(p: Path) -> dict:
    """The mapping in a YAML config file; ConfigError if it is not valid YAML or not a mapping."""
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of config sections, got {type(data).__name__}")
    return data


def preset_or_file(path_or_preset: str | Path) -> Path:
    """The YAML file itself, or configs/<name>.yaml; ConfigError listing the presets if neither exists."""
    p = Path(path_or_preset)
    if p.exists():
        return p
    preset = PRESETS_DIR / f"{path_or_preset}.yaml"
    if preset.exists():
        return preset
    names = ", ".join(sorted(x.stem for x in PRESETS_DIR.glob("*.yaml")))
    raise ConfigError(f"config '{path_or_preset}' is neither a file nor a preset; presets: {names}")


def load_config(path_or_preset: str | Path, overrides: list[str] | None = None) -> TetherConfig:
    """Load a YAML file or a preset name from configs/ (e.g. 'default'), then apply 'a.b=value' overrides.

    Switching ``algorithm`` on the command line drops the file's sections of the other algorithms (as a
    variant does); sections set by the overrides themselves are still checked.
    """
    p = preset_or_file(path_or_preset)
    cfg = validate_dict(compose_dict(read_config_file(p), parse_overrides(overrides)), source=str(p))
    cfg.expand()  # validate every variant now, not halfway through a comparison
    return cfg
