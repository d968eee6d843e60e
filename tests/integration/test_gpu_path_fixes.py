"""The fixes a review predicted the first GPU run would need, shown on the CPU where the CPU can show them (issue:
the first GPU check). Each test names the waste or the error it guards against."""

from __future__ import annotations

import copy

import pytest
import torch

from mmrl.config import load_config
from mmrl.models.loading import load_policy


@pytest.fixture(scope="module")
def bf16_lora_policy():
    """A LoRA policy on a bf16 base with non-zero adapters (B starts at zero: the merge would be invisible)."""
    torch.manual_seed(0)
    model = load_policy(
        load_config(None, ["model.dtype=bf16", "model.lora.enabled=true", "model.lora.r=4"]).model, device="cpu"
    ).model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


def _base_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "base_layer" in k}


def test_weight_sync_of_a_bf16_lora_base_leaves_the_base_bitwise_unchanged(bf16_lora_policy):
    """vLLM weight sync once per step: peft's merge/unmerge in bf16 rounds twice per round trip (the control below
    shows it drifts); the out-of-place merge never writes the base, and rounds the merged weight once."""
    from mmrl.generation.vllm_backend import policy_weights

    model = bf16_lora_policy
    base = _base_weights(model)
    assert base and all(v.dtype == torch.bfloat16 for v in base.values())
    for _ in range(5):
        synced = {k: v.clone() for k, v in policy_weights(model)}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    # the synced weight is the fp32 merge rounded once to bf16
    layer = model.base_model.model.model.language_model.layers[0].self_attn.q_proj
    want = (layer.base_layer.weight.float() + layer.get_delta_weight("default").float()).to(torch.bfloat16)
    assert torch.equal(synced["model.language_model.layers.0.self_attn.q_proj.weight"], want)

    control = copy.deepcopy(model)  # what the sync did before: merge_adapter() / unmerge_adapter() in place
    for _ in range(5):
        control.merge_adapter()
        control.unmerge_adapter()
    drifted = _base_weights(control)
    assert any(not torch.equal(drifted[k], v) for k, v in base.items())
