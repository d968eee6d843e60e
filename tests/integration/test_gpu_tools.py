"""The GPU check script and the throughput program work on a CPU-only machine too (one says so, one smoke-runs)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the script would run the full check")
def test_gpu_check_exits_cleanly_without_a_gpu():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device visible (torch.cuda.is_available() is False); nothing to check"]


def test_throughput_program_runs_the_training_code_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    out = tmp_path / "figures.json"
    code = program.main(["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "1", "--prompts", "1",
                         "--group-size", "2", "--max-new-tokens", "4", "--image-side", "56", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures["rollout_tokens_per_s"] > 0 and figures["train_tokens_per_s"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("train_tokens_per_s=")
    # useful FLOPs by benchmarks/flops.py: forward + backward (tower trained) = 3 x the rollout's forward
    assert figures["train_useful_tflop_per_step"] == pytest.approx(3 * figures["rollout_useful_tflop_per_step"])
    assert figures["rollout_fraction_of_matmul"] > 0 and figures["train_fraction_of_matmul"] > 0
    assert figures["train_mfu"] is None and figures["train_peak_memory_gib"] is None  # no known peak on a CPU


def test_throughput_program_refuses_bad_arguments_in_one_line(capsys):
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    assert program.main(["--preset", "tiny", "--device", "cpu", "--steps", "0"]) == 2
    assert program.main(["--preset", "tiny", "--device", "cpu", "--image-side", "50"]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("must be >= 1" in line for line in lines)


def test_benchmark_preset_has_the_published_size():
    """qwen2.5-vl-3b (the GPU check's throughput model) has Qwen2.5-VL-3B's 3.75B parameters (tied embeddings)."""
    from transformers import AutoModelForImageTextToText

    from mmrl.models.tiny import PRESETS, build_parts

    _tok, _proc, config, _eos, _pad = build_parts(PRESETS["qwen2.5-vl-3b"], 0)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert 3.70e9 < sum(p.numel() for p in model.parameters()) < 3.80e9
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_mfu_counts_only_the_parameters_a_text_token_multiplies():
    """MFU's N: Qwen2.5-3B's language model is 3.09B parameters (embeddings tied to the LM head, counted once) and
    Qwen2.5-7B's 7.07B without its untied input embedding (a lookup); the vision towers never see a text token."""
    from transformers import AutoModelForImageTextToText

    from mmrl.models.tiny import PRESETS, build_parts

    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    for preset, low, high in (("qwen2.5-vl-3b", 3.05e9, 3.12e9), ("qwen2.5-vl-7b", 7.03e9, 7.11e9)):
        _tok, _proc, config, _eos, _pad = build_parts(PRESETS[preset], 0)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        assert low < program.flops_parameters(model) < high, preset


def test_peak_flops_tell_the_h100_variants_apart():
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    assert program.peak_for_name("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert program.peak_for_name("NVIDIA H100 PCIe") == 756e12
    assert program.peak_for_name("NVIDIA A100-SXM4-80GB") == 312e12 and program.peak_for_name("NVIDIA A10G") == 125e12
    assert program.peak_for_name("Some Future GPU") is None
