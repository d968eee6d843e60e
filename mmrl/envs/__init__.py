"""Environments of multi-turn RL: the protocol, the registry, the safe runner and the built-in environments."""

from mmrl.envs.protocol import Environment, Observation
from mmrl.envs.registry import get_environment, list_environments, register_environment

__all__ = ["Environment", "Observation", "get_environment", "list_environments", "register_environment"]
