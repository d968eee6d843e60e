"""completion_length/correct and /incorrect (Dr. GRPO's length-bias metric): each completion's length goes to the side
its accuracy score says; unscorable completions and groups without an accuracy reward go to neither."""

from __future__ import annotations

import torch

from mmrl.rl.experience import Group
from mmrl.rl.group_stats import local_stats as _local_stats


def _group(lengths: list[int], accuracy: list[float | None] | None) -> Group:
    width = max(lengths)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    components = {} if accuracy is None else {"accuracy": accuracy, "format": [1.0] * len(lengths)}
    return Group(sample=None, prompt={}, completion_ids=torch.ones_like(mask), completion_mask=mask,
                 truncated=torch.zeros(len(lengths), dtype=torch.bool), texts=[""] * len(lengths),
                 rewards=torch.zeros(len(lengths)), components=components)


def test_lengths_split_by_the_accuracy_score():
    stats = _local_stats([_group([4, 1, 3, 7], [1.0, 0.0, None, 0.0]), _group([2, 9], None)])
    assert stats["length_correct"] == [4]
    assert stats["length_incorrect"] == [1, 7]
    assert len(stats["length"]) == 6  # the overall mean still counts every completion
