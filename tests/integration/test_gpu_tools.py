"""The GPU check script and its programs, rehearsed on a CPU-only machine: the same steps at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


STEPS = ["wheels", "versions", "tests", "prefix", "throughput", "grpo_step", "async", "vllm", "flash_attn"]


def probe_wheel(folder: Path) -> Path:
    """A real, minimal wheel (one module), so the rehearsal's `wheels` step installs something with --no-index."""
    import base64
    import hashlib
    import zipfile

    files = {
        "gpucheck_probe.py": b"VALUE = 42\n",
        "gpucheck_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gpucheck-probe\nVersion: 1.0\n",
        "gpucheck_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gpucheck_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("gpucheck_probe-1.0.dist-info/RECORD", record + "gpucheck_probe-1.0.dist-info/RECORD,,\n")
    return path


def run_check(out: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(out), **env},
    )
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    return result, summary


@pytest.mark.slow
def test_gpu_check_rehearsal_runs_every_step_on_cpu(tmp_path):
    """`scripts/gpu_check.sh --device cpu`: the GPU check's steps at tiny sizes, each with its log in $OUT, the wheels
    installed offline from the wheel folder, and a summary naming every step's status and figures, written last."""
    out = tmp_path / "out"
    probe_wheel(tmp_path / "wheels")
    result, summary = run_check(out, "--device", "cpu", GPU_CHECK_WHEELS=str(tmp_path / "wheels"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [s["step"] for s in summary["steps"]] == STEPS
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {**dict.fromkeys(STEPS[:7], "ok"), "vllm": "skipped", "flash_attn": "skipped"}, status
    assert (
        summary["ok"] is True and summary["complete"] is True and summary["failed"] == [] and summary["device"] == "cpu"
    )
    figures = {s["step"]: s["figures"] for s in summary["steps"]}
    assert all(s["seconds"] > 0 for s in summary["steps"][:7])
    assert all("not installed" in s["note"] for s in summary["steps"][7:])  # skipped with a line saying why
    assert figures["versions"]["torch"] == torch.__version__ and figures["versions"]["device"] == "cpu"
    assert figures["tests"]["skipped"] >= 4 and "failed" not in figures["tests"]  # gpu-marked: skipped on a CPU
    assert figures["prefix"]["ok"] is True and figures["prefix"]["fp32_logp_max_abs_diff"] < 1e-4
    # bf16: within its bound (both forwards now round the LM head's logits to bf16 alike: 0 here on the tiny preset)
    assert 0 <= figures["prefix"]["bf16_logp_max_abs_diff"] < 0.1
    assert 0 < figures["prefix"]["max_vision_grad_rel_diff"] < 0.05  # the gradients do differ in bf16
    assert figures["grpo_step"]["static_estimate_gib"] > 0
    assert figures["throughput"]["train_tokens_per_s"] > 0 and figures["throughput"]["rollout_tokens_per_s"] > 0
    assert figures["grpo_step"]["fits"] is True and figures["grpo_step"]["weights_moved"] is True
    assert figures["grpo_step"]["grad_norm"] > 0
    # the async step: both arms ran, the async one a step behind after its first (3 steps: staleness 0, 1, 1)
    assert figures["async"]["sync_samples_per_s"] > 0 and figures["async"]["async_samples_per_s"] > 0
    assert figures["async"]["speedup"] > 0 and figures["async"]["mean_staleness"] == pytest.approx(2 / 3, abs=1e-3)
    # $OUT holds one log per step that ran (the async step's appended to throughput.log) and the two summaries:
    # within the 8 files that come back from a GPU run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.log" for s in STEPS[:6]] + ["summary.json", "summary.txt"]
    )
    assert "== gpu_check step async ==" in (out / "throughput.log").read_text()
    assert "Successfully installed gpucheck-probe-1.0" in (out / "wheels.log").read_text()
    assert max(p.stat().st_mtime_ns for p in out.iterdir()) in {
        (out / n).stat().st_mtime_ns for n in ("summary.json", "summary.txt")
    }
    text = (out / "summary.txt").read_text().splitlines()
    assert text[0].startswith("gpu_check summary (cpu): all steps that ran passed")
    assert [line.split()[:2] for line in text[1:]] == [[s, status[s]] for s in STEPS]


def test_gpu_check_without_torch_fails_and_says_so(tmp_path):
    """A Python without torch (here: python3 -S, no site-packages): every step is still accounted for, the summary is
    written, and the script exits 3 (it exited 0 before)."""
    wrapper = tmp_path / "python-without-site"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    probe_wheel(tmp_path / "wheels")
    result, summary = run_check(out, "--device", "cpu", PYTHON=str(wrapper), GPU_CHECK_WHEELS=str(tmp_path / "wheels"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "torch cannot be imported" in result.stderr
    status = {s["step"]: s["status"] for s in summary["steps"]}
    # pip is not importable either: the wheels step fails, and the next step runs all the same
    assert status["wheels"] == "fail" and status["versions"] == "fail"
    assert "torch cannot be imported" in (out / "versions.log").read_text()
    assert all(status[s] == "skipped" for s in STEPS[2:])
    assert summary["failed"] == ["wheels", "versions"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the check would run")
def test_gpu_check_on_cuda_without_a_device_fails_in_one_line(tmp_path):
    result, summary = run_check(tmp_path / "out", GPU_CHECK_WHEELS=str(tmp_path / "no-wheels"))
    assert result.returncode == 1
    versions = summary["steps"][1]
    assert versions["step"] == "versions" and versions["status"] == "fail"
    assert versions["note"].endswith("no CUDA device visible (torch.cuda.is_available() is False)")
    assert all(s["status"] == "skipped" and "no CUDA device" in s["note"] for s in summary["steps"][2:])


def test_throughput_program_names_the_cuda_device_it_sets():
    """`torch.cuda.set_device(torch.device('cuda'))` raises ValueError (no index): the program gives the device the
    current index first. (The set_device call itself needs a GPU; the index check it starts with does not.)"""
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    assert program.with_index(torch.device("cuda"), 0) == torch.device("cuda", 0)
    assert torch.cuda._get_device_index(program.with_index(torch.device("cuda"), 0)) == 0
    assert program.with_index(torch.device("cuda", 1), 0) == torch.device("cuda", 1)
    assert program.with_index(torch.device("cpu"), 0) == torch.device("cpu")


def test_throughput_program_runs_the_training_code_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    out = tmp_path / "figures.json"
    code = program.main(
        [
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--steps",
            "1",
            "--prompts",
            "1",
            "--group-size",
            "2",
            "--max-new-tokens",
            "4",
            "--image-side",
            "56",
            "--json",
            str(out),
        ]
    )
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


def test_a_run_stopped_from_outside_still_leaves_a_summary(tmp_path):
    """The device tool kills a command at its time limit (and only $OUT comes back): the summary is rewritten after
    every step, marked incomplete, so a run stopped in its second step still says what its first found."""
    import signal
    import time

    wrapper = tmp_path / "python-stuck-in-versions"  # the `versions` step's program (read from stdin) hangs
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = "-" ] && exec sleep 120\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": str(wrapper), "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels")}
    run = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "versions.log").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "versions.log").exists(), "the versions step never started"
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # as a time limit does: no trap runs
        run.wait()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["ok"] is False
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [("wheels", "skipped")]
    assert (
        (out / "summary.txt")
        .read_text()
        .startswith("gpu_check summary (cpu): INCOMPLETE (the run stopped after step wheels)")
    )
