"""Rule-based rewards: `fn(completions, **columns) -> list[float | None]`, registered by name.

>>> from mmrl.rewards import get_reward, list_rewards
>>> "accuracy" in list_rewards()
True
"""

from mmrl.rewards import accuracy, curr_reft, format, grounding, gui, length  # noqa: F401  (register built-ins)
from mmrl.rewards.accuracy import verify_answer
from mmrl.rewards.extraction import extract_answer
from mmrl.rewards.registry import get_reward, list_rewards, register_reward

__all__ = ["extract_answer", "get_reward", "list_rewards", "register_reward", "verify_answer"]
