"""Resuming a LoRA checkpoint with model.lora off, or a whole-model checkpoint with it on, is one line naming
model.lora.enabled and exit 2 — on every engine (the FSDP2 and single-process loaders each failed their own way:
AttributeError tracebacks, or a message about unreadable weights)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmrl.checkpoints import store as ckpt
from mmrl.config import load_config
from mmrl.models.loading import load_policy
from tests.integration.launch import CONFIG, FIXTURES, ROOT


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 4, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


def _checkpoint(run_dir: Path, lora: bool) -> Path:
    """A complete checkpoint as the trainer writes it (adapter only under LoRA, whole weights otherwise)."""
    model = load_policy(load_config(str(CONFIG), ["model.dtype=fp32", f"model.lora.enabled={str(lora).lower()}",
                                                  "model.lora.r=4"]).model).model
    return ckpt.save_checkpoint(run_dir, 1, model, {"step": 1})


@pytest.mark.parametrize("saved_lora", [True, False])
def test_resuming_across_lora_and_whole_weights_is_one_line(data, tmp_path, saved_lora):
    run_dir = tmp_path / "run"
    path = _checkpoint(run_dir, saved_lora)
    args = [f"data.train={data}", f"trainer.output_dir={run_dir}", f"trainer.resume={path}", "trainer.max_steps=2",
            "trainer.report_to=[jsonl]", "trainer.progress=false", "model.dtype=fp32", "trainer.device=cpu",
            f"model.lora.enabled={str(not saved_lora).lower()}", "model.lora.r=4",
            f"rewards=[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mmrl", "train", str(CONFIG), *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "model.lora.enabled" in line]
    assert len(lines) == 1 and str(path) in lines[0], done.stderr[-2000:]
    assert f"model.lora.enabled={str(saved_lora).lower()}" in lines[0]


def _lora(r: int = 4, *extra: str):
    return load_policy(load_config(str(CONFIG), ["model.dtype=fp32", "model.lora.enabled=true", f"model.lora.r={r}",
                                                 *extra]).model).model


def test_an_adapter_of_other_lora_settings_is_one_line_on_one_process_too(tmp_path):
    """One process (and DDP, DeepSpeed) load a LoRA checkpoint as FSDP2 does: another rank was a traceback, another
    set of target modules loaded silently (the adapters the live model lacks dropped, the ones the checkpoint lacks
    left at their initial values)."""
    import torch

    from mmrl.errors import UserError

    saved = _lora(4)
    with torch.no_grad():
        for name, p in saved.named_parameters():
            if "lora_B" in name:
                p.normal_()
    path = ckpt.save_checkpoint(tmp_path / "all", 1, saved, {"step": 1})
    narrow = ckpt.save_checkpoint(tmp_path / "q", 1, _lora(4, "model.lora.target_modules=[q_proj]"), {"step": 1})
    for live, checkpoint in ((_lora(2), path), (_lora(4, "model.lora.target_modules=[q_proj]"), path),
                             (_lora(4), narrow)):
        with pytest.raises(UserError, match="model.lora") as err:
            ckpt.load_model_weights(live, checkpoint)
        assert "\n" not in str(err.value)
    again = _lora(4)
    ckpt.load_model_weights(again, path)  # the same settings still load, exactly
    mine = dict(again.named_parameters())
    assert all(torch.equal(p, mine[k]) for k, p in saved.named_parameters() if "lora_" in k)
