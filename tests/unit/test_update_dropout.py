"""`disable_dropout` switches off every dropout the RL update's forwards could apply, whatever the architecture."""

from __future__ import annotations

import torch

from mmrl.models.dropout import disable_dropout


def test_siglip_attention_dropout_read_at_forward_time_is_switched_off():
    """SigLIP (Gemma3's vision tower; Idefics3/SmolVLM likewise) keeps its attention-dropout rate in a float attribute
    named `dropout`, read at every forward in train mode: it must be zeroed like the dropout modules."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14, attention_dropout=0.5, attn_implementation="eager")
    model = SiglipVisionModel(config).train()
    disable_dropout(model)
    pixels = torch.randn(1, 3, 28, 28)
    first = model(pixel_values=pixels).last_hidden_state
    second = model(pixel_values=pixels).last_hidden_state
    assert torch.equal(first, second), "a dropout still ran in train mode"
    assert model.training  # only the rates change, not the mode
