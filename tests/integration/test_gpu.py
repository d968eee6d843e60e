"""The same code on CUDA: GRPO and SFT in bf16, flash-attention 2, two-GPU data parallel (NCCL).

Marked `gpu`: skipped where no CUDA device is visible; `scripts/gpu_check.sh` runs them (`pytest -m gpu`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.runs.logger import read_metrics

pytestmark = pytest.mark.gpu  # tests/conftest.py skips gpu-marked tests where no CUDA device is visible

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
REWARD = ROOT / "tests" / "fixtures" / "trainer" / "varied_reward.py"
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None



@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 8, 0, tmp_path_factory.mktemp("synthetic"), forms=["open"], image_size=56)


def grpo_overrides(data: Path, out: Path, **extra) -> list[str]:
    base = {"data.train": str(data), "trainer.output_dir": str(out), "trainer.report_to": "[jsonl]",
            "trainer.progress": "false", "trainer.save_steps": 0, "trainer.sample_steps": 0, "trainer.max_steps": 2,
            "trainer.device": "cuda", "model.dtype": "bf16", "model.attn_implementation": "sdpa",
            "rollout.max_completion_length": 8,
            "rewards": f"[{{name: '{REWARD}:reward'}}]", "optimizer.lr": 1e-3}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3-vl", "tiny-gemma3"])
def test_grpo_steps_in_bf16_on_cuda(preset, synthetic_data, tmp_path):
    from mmrl.rl.trainer import GRPOLoop

    trainer = GRPOLoop(load_config(CONFIG, grpo_overrides(synthetic_data, tmp_path, **{"model.name_or_path": preset})))
    assert trainer.generator.device.type == "cuda"
    before = {k: v.detach().clone() for k, v in trainer.run.model.named_parameters()}
    trainer.train()
    after = dict(trainer.run.model.named_parameters())
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in rows)


def test_sft_steps_in_bf16_on_cuda(synthetic_data, tmp_path):
    from mmrl.sft.trainer import train_sft

    over = {"data.train": str(synthetic_data), "trainer.output_dir": str(tmp_path), "trainer.report_to": "[jsonl]",
            "trainer.progress": "false", "trainer.batch_size": 4, "trainer.max_steps": 4, "optimizer.lr": 3e-3,
            "trainer.device": "cuda", "model.dtype": "bf16"}
    run_dir = train_sft(load_config(CONFIG, [f"{k}={v}" for k, v in over.items()]))
    losses = [r["loss"] for r in read_metrics(run_dir)]
    assert len(losses) == 4 and losses[-1] < losses[0]


@pytest.mark.skipif(not HAS_FLASH_ATTN, reason="flash-attn is not installed")
def test_flash_attention_2_shared_prefix_matches_naive_and_trains(synthetic_data, tmp_path):
    import numpy as np
    from PIL import Image

    from mmrl.models.loading import load_policy
    from mmrl.models.logprobs import completion_logprobs, naive_completion_logprobs
    from mmrl.rl.trainer import GRPOLoop

    cfg = load_config(None, ["model.dtype=bf16", "model.attn_implementation=flash_attention_2"]).model
    loaded = load_policy(cfg, device="cuda")
    assert loaded.model.config._attn_implementation == "flash_attention_2"
    pixels = (np.random.RandomState(0).rand(84, 56, 3) * 255).astype("uint8")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color?"}]}]
    text = loaded.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = dict(loaded.processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt"))
    ids = torch.randint(0, 500, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        shared = completion_logprobs(loaded.model, prompt, ids, mask)
        naive = naive_completion_logprobs(loaded.model, prompt, ids, mask)
    assert shared.dtype == torch.float32 and shared.device.type == "cuda"
    assert (shared - naive).abs().max() < 0.1  # bf16 compute: close, not bit-equal

    over = grpo_overrides(synthetic_data, tmp_path, **{"model.attn_implementation": "flash_attention_2",
                                                       "trainer.max_steps": 1})
    GRPOLoop(load_config(CONFIG, over)).train()
    (row,) = read_metrics(tmp_path)
    assert row["grad_norm"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_keep_identical_parameters(synthetic_data, tmp_path, port_args):
    out = tmp_path / "ranks"
    out.mkdir()
    args = grpo_overrides(synthetic_data, tmp_path / "run", **{"trainer.prompts_per_step": 2})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file",
           str(ROOT / "configs" / "accelerate" / "ddp_cpu_2proc.yaml"), "--num_processes", "2",
           str(ROOT / "tests" / "fixtures" / "trainer" / "ddp_params.py"), str(CONFIG), str(out), *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0,1")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted((out / f"rank-{r}.txt").read_text().split() for r in (0, 1))
    assert lines[0][1] == lines[1][1] == "2"
    assert lines[0][0] == lines[1][0]  # NCCL all-reduce kept both ranks' weights identical
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
