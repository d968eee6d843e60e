"""The benchmark's useful-FLOP counter (benchmarks/flops.py) against hand counts on tiny shapes and real modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _flops():
    spec = importlib.util.spec_from_file_location("bench_flops", ROOT / "benchmarks" / "flops.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


flops = _flops()
# hidden 8, 2 heads of 4, 1 k/v head, SwiGLU width 16, vocabulary 10
TEXT = flops.TextShape(hidden=8, layers=1, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)


def test_one_decoder_layer_by_hand():
    # q 8x8 = 64, k 8x4 = 32, v 8x4 = 32, o 8x8 = 64, gate/up/down 3 x 8x16 = 384: 576 multiply-adds = 1152 FLOPs
    assert TEXT.linear_flops_per_position() == 1152
    assert flops.TextShape(**{**TEXT.__dict__, "layers": 3}).linear_flops_per_position() == 3 * 1152
    # one query against 5 keys: QK^T 2*4*5 + AV 2*4*5 = 80 per head, 2 heads = 160
    assert TEXT.attention_flops(1, 4) == 160
    # 3 causal queries from scratch see 1 + 2 + 3 = 6 keys: 6 * 32 = 192
    assert TEXT.attention_flops(3, 0) == 192
    assert TEXT.head_flops(3) == 3 * 2 * 8 * 10


def test_a_group_shares_its_prompt():
    # prompt of 3 tokens, G = 2 completions of 2 tokens: positions 3 + 2 * 1 = 5 -> 5 * 1152 = 5760;
    # attention: prompt 192, each branch's one position sees 4 keys: 2 * 128 = 256; LM head rows 1 + 2 = 3 -> 480
    assert flops.group_text_forward(TEXT, 3, 2, 2) == 5760 + 192 + 256 + 480


def test_one_vision_tower_by_hand():
    vision = flops.VisionShape(hidden=4, depth=2, intermediate=8, patch=2, temporal_patch=2, in_channels=3, merge=2,
                               out_hidden=6, window=1, full_attention_blocks=(1,))
    # a 4x4-patch image, 16 patches, merged 2x2 (4 merged tokens), windows of 1 merged unit (4 patches each)
    embed = 16 * 2 * (3 * 2 * 2 * 2) * 4  # conv 3x2x2x2 -> 4 per patch: 3072
    blocks = 2 * 16 * 2 * (4 * 4 * 4 + 3 * 4 * 8)  # qkv + proj 4*4*4, SwiGLU 3*4*8: 10240
    full = 4 * 4 * 16 * 16  # block 1: 16 x 16 (query, key) pairs: 4096
    windowed = 4 * 4 * (4 * 4 * 4)  # block 0: 4 windows of 4 x 4 pairs: 1024
    merger = 4 * 2 * (16 * 16 + 16 * 6)  # 16-wide MLP to 6 per merged token: 2816
    assert embed + blocks + full + windowed + merger == 21248
    assert vision.image_flops((1, 4, 4)) == 21248
    # a grid the windows do not divide (3 merged units a side, windows of 2): window sides 2 and 1
    wide = flops.VisionShape(**{**vision.__dict__, "window": 2, "full_attention_blocks": ()})
    pairs = (4 * 4) ** 2 + 2 * (2 * 4) ** 2 + (1 * 4) ** 2  # 2x2, 2x1, 1x2, 1x1 windows: 256 + 128 + 16
    assert wide._window_pairs(6, 6) == pairs


def test_step_phases_follow_the_counting_rule():
    config = _tiny_config()
    prompt = flops.PromptShape(tokens=20, grids=((1, 4, 4),))
    trainable = flops.grpo_step_flops(config, [prompt, prompt], group_size=4, length=8, vision_trainable=True)
    frozen = flops.grpo_step_flops(config, [prompt, prompt], group_size=4, length=8, vision_trainable=False)
    with_ref = flops.grpo_step_flops(config, [prompt, prompt], group_size=4, length=8, vision_trainable=False,
                                     beta=0.04)
    text = flops.TextShape.from_config(config)
    image = flops.VisionShape.from_config(config).image_flops((1, 4, 4))
    group = flops.group_text_forward(text, 20, 4, 8)
    assert trainable.rollout == frozen.rollout == 2 * (group + image)
    assert trainable.update == 3 * trainable.rollout and frozen.update == 3 * 2 * group
    assert trainable.reference == 0 and with_ref.reference == 2 * group
    assert with_ref.total == with_ref.rollout + with_ref.update + with_ref.reference


def _tiny_config():
    from mmrl.models.presets import PRESETS
    from mmrl.models.tiny import build_config

    return build_config(PRESETS["tiny"])


def test_the_counted_weights_are_the_models_own():
    """The per-position count equals 2 x the weights of the decoder's Linear layers (biases aside), and the tower's
    block count 2 x its blocks' Linear weights, on the real tiny model."""
    from transformers import AutoModelForImageTextToText

    config = _tiny_config()
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    decoder = model.model.language_model.layers
    weights = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    assert flops.TextShape.from_config(config).linear_flops_per_position() == 2 * weights
    assert flops.TextShape.from_config(config).head_flops(1) == 2 * model.lm_head.weight.numel()
    vision = flops.VisionShape.from_config(config)
    blocks = sum(m.weight.numel() for m in model.model.visual.blocks.modules() if isinstance(m, torch.nn.Linear))
    merger = sum(m.weight.numel() for m in model.model.visual.merger.modules() if isinstance(m, torch.nn.Linear))
    embed = model.model.visual.patch_embed.proj.weight.numel()
    patches, merged = 16, 4
    attention = vision.image_flops((1, 4, 4)) - 2 * (embed * patches + blocks * patches + merger * merged)
    # what is left is attention only: 2 blocks, 16 patches in one window of 2x2 merged units each way
    assert attention == 4 * vision.hidden * 16 * 16 * vision.depth


def test_other_vision_towers_are_refused():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        flops.VisionShape.from_config(SimpleNamespace(vision_config=SimpleNamespace(model_type="siglip_vision_model")))


def test_matmul_rates_are_positive_on_this_device():
    rates = flops.matmul_rates("cpu", size=64, repeats=3)
    assert len(rates) == 3 and all(r > 0 for r in rates)
