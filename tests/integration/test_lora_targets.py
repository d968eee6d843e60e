"""`model.lora.target_modules=all-linear` on the tiny model: exactly the documented linear layers get adapters (with
`include_vision`: the language model, the vision blocks and the merger), and a GRPO step trains them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.config.model import ModelConfig
from mmrl.models.loading import load_policy
from mmrl.rl.trainer import GRPOLoop

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
VARIED_REWARD = ROOT / "tests" / "fixtures" / "trainer" / "varied_reward.py"


def adapted(model: torch.nn.Module) -> set[str]:
    """Names (relative to the base model) of the modules peft wrapped with a LoRA adapter."""
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, module in model.named_modules() if hasattr(module, "lora_A")}


@pytest.fixture(scope="module")
def plain_linears(tiny_model_dir) -> set[str]:
    model = load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), for_training=False).model
    return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def test_all_linear_without_vision_adapts_every_language_linear_only(tiny_model_dir, plain_linears):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora={"enabled": True, "r": 2})
    names = adapted(load_policy(cfg).model)
    language = {n for n in plain_linears if ".language_model." in n}
    assert len(language) == 21  # 3 layers x (q, k, v, o, gate, up, down)
    assert names == language


def test_all_linear_with_vision_adapts_language_vision_blocks_and_merger(tiny_model_dir, plain_linears):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora={"enabled": True, "r": 2, "include_vision": True})
    model = load_policy(cfg).model
    names = adapted(model)
    assert names == plain_linears - {"lm_head"}
    # The merger's layers are named `mlp.0` / `mlp.2`: they, and no vision block (`blocks.0`), are adapted.
    assert {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2", "model.visual.blocks.0.attn.qkv"} <= names
    assert not any(n.endswith(("blocks.0", "blocks.1")) for n in names)
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            assert isinstance(module.base_layer, torch.nn.Linear), name


def test_one_grpo_step_moves_the_vision_and_merger_adapters(tiny_model_dir, tmp_path):
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 4, 0, tmp_path / "data", image_size=56)
    args = {
        "data.train": str(data), "trainer.output_dir": str(tmp_path / "run"), "trainer.report_to": "[jsonl]",
        "trainer.progress": "false", "trainer.save_steps": 0, "trainer.sample_steps": 0, "trainer.max_steps": 1,
        "rollout.max_completion_length": 6, "rewards": f"[{{name: '{VARIED_REWARD}:reward'}}]",
        "model.lora.enabled": "true", "model.lora.r": 2, "model.lora.include_vision": "true", "optimizer.lr": 1e-2,
    }
    trainer = GRPOLoop(load_config(CONFIG, [f"{k}={v}" for k, v in args.items()]))
    before = {n: p.detach().clone() for n, p in trainer.run.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.run.model.named_parameters())
    moved = {n for n, b in before.items() if not torch.equal(after[n].detach().cpu(), b.cpu())}
    assert any(".visual.merger.mlp.0." in n for n in moved)
    assert any(".visual.blocks." in n for n in moved)
    assert any(".language_model." in n for n in moved)
