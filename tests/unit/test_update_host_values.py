"""The update reads its micro-batches' losses and token counts in one device-to-host copy per mini-batch: the values
must be exactly what one `float()` per tensor gave, whatever the loss dtype."""

from __future__ import annotations

import pytest
import torch

from mmrl.rl.step_metrics import ForwardResult, host_values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_one_copy_gives_the_values_of_one_float_per_tensor(dtype):
    generator = torch.Generator().manual_seed(0)
    forwards = []
    for i in range(5):
        mask = (torch.rand(8, 300, generator=generator) < 0.9).long()  # integer counts, as a loss mask holds
        loss = (torch.randn((), generator=generator, dtype=torch.float64) * 10 ** (i - 2)).to(dtype)
        forwards.append(ForwardResult(loss=loss, tokens=mask.sum(), metrics={}, mismatch={},
                                      mismatch_tokens=mask[:, :100].float().sum(), size=0))
    expected = [(float(f.loss), float(f.tokens), float(f.mismatch_tokens)) for f in forwards]
    assert host_values(forwards) == expected
    assert host_values([]) == []
