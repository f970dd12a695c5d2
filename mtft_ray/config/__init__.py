"""Experiment configs: YAML → validated pydantic models, with dotted overrides and a hash."""

from mtft_ray.config.load import config_hash, load_config, save_resolved
from mtft_ray.config.schema import ExperimentConfig

__all__ = ["ExperimentConfig", "config_hash", "load_config", "save_resolved"]
