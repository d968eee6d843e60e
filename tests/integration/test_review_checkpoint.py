"""Review: resuming reads a checkpoint's weights into the live model's own architecture."""

from __future__ import annotations

import json
import shutil

import torch

from mmrl.checkpoints.store import load_model_weights
from mmrl.config.model import ModelConfig
from mmrl.models.loading import load_policy


def test_weights_load_with_the_live_config_whatever_the_checkpoints_config_json_says(tiny_model_dir, tmp_path):
    # A damaged config.json (`{}`) made `from_pretrained` build the class defaults, a 7B model, before reading any
    # weight: the resume was killed for memory. Here a wrong size stands in for it (safe to run on the old code:
    # it failed with a shape error there).
    ckpt = tmp_path / "step-1"
    shutil.copytree(tiny_model_dir, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["hidden_size"] = 64
    (ckpt / "config.json").write_text(json.dumps(config))
    model = load_policy(ModelConfig(name_or_path=str(tiny_model_dir), dtype="fp32"), device="cpu").model
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    load_model_weights(model, ckpt)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
