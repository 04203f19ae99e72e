"""The one configuration schema used by the CLI, YAML presets, the runtime, sweeps and the REST API.

Every field carries a description; defaults follow the papers (summarised in docs/methods.md) and cite them.
Unknown fields are rejected so a typo never silently falls back to a default. The package: `base` (the
strict base and ConfigError), `task`, `methods` and `tracking` (the sections), `run` (TetherConfig, validation),
`compose` (the one way layers merge), `load` (presets, files, `--set`).
"""
from learner.config.base import ConfigError, Strict
from learner.config.data import DatasetConfig, PreferenceConfig, ScorerConfig
from learner.config.compose import ALGORITHM_SECTIONS, ALGORITHMS, compose_dict, deep_merge, nest, parse_overrides, without_other_algorithms
from learner.config.load import PRESETS_DIR, load_config, preset_or_file, read_config_file
from learner.config.methods import (
    ElasticResetConfig,
    EnsembleConfig,
    FDPGConfig,
    GenerationConfig,
    KLConfig,
    PPOConfig,
    QuarkConfig,
    ReferenceConfig,
)
from learner.config.run import GuardConfig, LearnerResources, RoleResources, RuntimeConfig, TetherConfig, TrainConfig, config_from_dump, validate_dict
from learner.config.task import GoldConfig, LoraSettings, PolicyConfig, ProxyConfig, TaskConfig, TokenizerConfig
from learner.config.tracking import MLflowTrackingConfig, TrackingConfig, WandbTrackingConfig

__all__ = [
    "ALGORITHMS", "ALGORITHM_SECTIONS", "ConfigError", "DatasetConfig", "PreferenceConfig", "ScorerConfig", "ElasticResetConfig", "EnsembleConfig", "FDPGConfig",
    "GenerationConfig", "GoldConfig", "GuardConfig", "KLConfig", "LearnerResources", "LoraSettings", "PPOConfig", "PRESETS_DIR", "PolicyConfig", "ProxyConfig",
    "QuarkConfig", "ReferenceConfig", "RoleResources", "RuntimeConfig", "Strict", "TaskConfig", "TetherConfig",
    "TokenizerConfig", "TrackingConfig", "MLflowTrackingConfig", "WandbTrackingConfig", "TrainConfig", "compose_dict", "config_from_dump", "deep_merge", "load_config", "nest",
    "parse_overrides", "preset_or_file", "read_config_file", "validate_dict", "without_other_algorithms",
]
