"""What each process knows of its step's groups, per completion, before the trainer gathers them into the step's
metrics: rewards and their components, lengths (by correctness: Dr. GRPO's length bias shows in the wrong answers),
truncation, and whether a group's rewards have no spread."""

from __future__ import annotations

import torch

from mmrl.rl.experience import Group


def local_stats(groups: list[Group]) -> dict[str, list]:
    stats: dict[str, list] = {"reward": [], "length": [], "truncated": [], "zero_std": [], "length_correct": [],
                              "length_incorrect": []}
    for group in groups:
        lengths = group.completion_mask.sum(dim=1).tolist()
        stats["reward"].extend(group.rewards.tolist())
        stats["length"].extend(lengths)
        stats["truncated"].extend(group.truncated.float().tolist())
        for length, score in zip(lengths, group.components.get("accuracy", [])):
            if score is not None:  # an unscorable completion is neither correct nor incorrect
                stats["length_correct" if score >= 0.5 else "length_incorrect"].append(length)
        # From the rewards (all equal, or fewer than 2 scorable): under reinforce_pp or a KL in the reward, a group of
        # equal rewards has non-zero advantages.
        scorable = group.rewards[~torch.isnan(group.rewards)]
        stats["zero_std"].append(float(scorable.numel() < 2 or bool((scorable == scorable[0]).all())))
        for name, values in group.components.items():
            stats.setdefault(f"reward/{name}", []).extend(values)
    return stats
