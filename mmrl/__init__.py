"""mmrl: turn vision-language models into reasoners with reinforcement learning.

`from mmrl import GRPOTrainer, GRPOConfig` is the TRL-shaped Python API (see `mmrl.api`); it is imported on first use
so that `import mmrl` (and the `mmrl` command line) stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["GRPOConfig", "GRPOTrainer", "MMRLConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("GRPOConfig", "GRPOTrainer"):
        from mmrl import api

        return getattr(api, name)
    if name == "MMRLConfig":
        from mmrl.config import MMRLConfig

        return MMRLConfig
    raise AttributeError(f"module 'mmrl' has no attribute '{name}'")
