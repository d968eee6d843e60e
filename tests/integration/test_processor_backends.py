"""Processors load without torchvision on every transformers mmrl allows (up to 5.17 `AutoImageProcessor` itself
needs torchvision; mmrl then builds the PIL image processor), and one that cannot is refused in one line."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmrl.errors import UserError
from mmrl.models.processor import load_processor

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real_models"
NO_TORCHVISION = importlib.util.find_spec("torchvision") is None


@pytest.mark.parametrize("model", ["qwen2_5_vl/Qwen2.5-VL-3B-Instruct", "qwen3_vl_instruct/Qwen3-VL-4B-Instruct"])
def test_real_qwen_processors_turn_an_image_into_patches(model):
    processor = load_processor(str(REAL / model))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64), (255, 0, 0))], return_tensors="pt")
    (grid,) = inputs["image_grid_thw"].tolist()
    patches = grid[0] * grid[1] * grid[2]
    assert grid[0] == 1 and inputs["pixel_values"].shape[0] == patches
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == patches // 4  # 2 x 2 patches per token


@pytest.mark.skipif(not NO_TORCHVISION, reason="the refusal is for machines without torchvision")
def test_an_image_processor_that_needs_torchvision_is_one_line(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(REAL / "qwen2_5_vl" / "Qwen2.5-VL-3B-Instruct", model)
    config = json.loads((model / "preprocessor_config.json").read_text())
    config["image_processor_type"] = "Sam2ImageProcessor"  # a processor transformers has only a torchvision build of
    (model / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        load_processor(str(model))
    message = str(err.value)
    assert "\n" not in message and "Sam2ImageProcessor" in message and "pip install 'torchvision==0." in message
