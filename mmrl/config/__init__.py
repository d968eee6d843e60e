"""Typed config tree (pydantic v2) and its loader; see `loader.py` for the load order."""

from mmrl.config.loader import apply_overrides, load_config, save_resolved, to_yaml
from mmrl.config.schema import MMRLConfig

__all__ = ["MMRLConfig", "apply_overrides", "load_config", "save_resolved", "to_yaml"]
