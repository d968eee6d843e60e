"""`model.compile` with `model.gradient_checkpointing`: torch.compile cannot trace the checkpointed decoder layer
(dynamo gives up on transformers' checkpoint wrapper and runs the layer eager), so the pair would silently compile
nothing. GRPO refuses it in one line naming both fields, before the run directory or the model is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.rl.trainer import GRPOLoop

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tests" / "grpo_tiny.yaml"


def test_compile_with_gradient_checkpointing_is_a_one_line_error(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(CONFIG, ["model.compile=true", "model.gradient_checkpointing=true",
                               f"data.train={tmp_path / 'missing.jsonl'}", f"trainer.output_dir={out}"])
    with pytest.raises(UserError) as err:
        GRPOLoop(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "model.compile" in message and "model.gradient_checkpointing" in message
    assert not out.exists()  # refused before the run directory is claimed
