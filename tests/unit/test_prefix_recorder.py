"""The prompt pass's cache: a checkpoint replay of a layer leaves exactly the replayed keys, and leaves the tensors of
the first pass alone (transformers <= 5.17's `reset()` zeroed them in place and kept the layer initialised)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

from mmrl.errors import UserError
from mmrl.models.shared_cache import PrefixRecorder, checkpoint_with_shared_cache


def states(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, 5, 4, generator=generator), torch.randn(1, 2, 5, 4, generator=generator)


def test_a_replayed_layer_holds_exactly_the_replayed_keys():
    config = Qwen2Config(num_hidden_layers=2, hidden_size=8, num_attention_heads=2, num_key_value_heads=2)
    recorder = PrefixRecorder(config=config)
    first_keys, first_values = states(0)
    kept = first_keys.clone(), first_values.clone()
    seen = recorder.update(first_keys, first_values, 0)
    recorder.update(*states(1), 1)
    assert torch.equal(seen[0], kept[0]) and torch.equal(seen[1], kept[1])

    replay_keys, replay_values = states(2)  # the backward's recompute (other values, to tell them apart)
    keys, values = recorder.update(replay_keys, replay_values, 0)
    assert torch.equal(keys, replay_keys) and torch.equal(values, replay_values)  # not appended after anything
    assert torch.equal(recorder.layers[0].keys, replay_keys) and recorder.get_seq_length(0) == 5
    assert torch.equal(first_keys, kept[0]) and torch.equal(seen[0], kept[0])  # the first pass's tensors untouched
    assert torch.equal(recorder.layers[1].keys, states(1)[0])  # the other layer is left as it was


def test_a_checkpointed_layer_without_transformers_cache_switch_is_refused():
    """Setting `_can_checkpoint_with_cache` on a layer that does not read it would change nothing: the layer would
    drop the prompt's cache under checkpointing, so the shared-prefix forward refuses it in one line."""
    layer = torch.nn.Linear(2, 2)
    layer.gradient_checkpointing = True  # checkpointed by a transformers that has neither name
    with pytest.raises(UserError, match="model.gradient_checkpointing") as err:
        with checkpoint_with_shared_cache([layer]):
            pass
    assert "\n" not in str(err.value) and "_can_checkpoint_with_cache" in str(err.value)
    assert "_can_checkpoint_with_cache" not in layer.__dict__  # nothing was set on it
