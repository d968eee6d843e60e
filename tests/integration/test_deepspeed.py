"""DeepSpeed ZeRO-2 as the training engine: real processes (accelerate launch, CPU preset, gloo), real DeepSpeed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.engine.run_logger import read_metrics
from mmrl.errors import UserError
from mmrl.models.loading import load_policy

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'mmrl[deepspeed]')")

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "trainer"
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
PRESET = ROOT / "configs" / "accelerate" / "deepspeed_zero2_cpu_2proc.yaml"


def _errors(stderr: str) -> str:
    """The error lines of a failed launch (its full stderr is mostly the two ranks' interleaved tracebacks)."""
    return "\n".join(line for line in stderr.splitlines() if "Error" in line)[-3000:]


def _base_args(data: Path) -> list[str]:
    return [f"data.train={data}", "trainer.report_to=[jsonl]", "trainer.progress=false", "trainer.save_steps=0",
            "trainer.sample_steps=0", "trainer.prompts_per_step=2", "rollout.max_completion_length=5",
            "model.dtype=fp32", "trainer.device=cpu", "optimizer.lr=1e-3",
            f"rewards=[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}]"]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, _errors(done.stderr)


def test_one_process_and_deepspeed_zero2_train_to_the_same_weights(tmp_path, tiny_model_dir, port_args):
    """Same global batch (2 prompts x G=4 per step, 2 steps, real rollouts) on 1 process and on 2 DeepSpeed ZeRO-2
    processes: final fp32 weights within 1e-5; both ranks ran, each holding about half the optimizer state; the
    run's first metrics row records world size and engine."""
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", image_size=56)
    launch = [sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file", str(PRESET)]
    results = {}
    for name, cmd in (("one", [sys.executable]), ("deepspeed", launch)):
        out = tmp_path / name
        out.mkdir()
        _run([*cmd, str(FIXTURES / "world_size_run.py"), str(CONFIG), str(out), f"trainer.output_dir={out / 'run'}",
              "trainer.max_steps=2", "trainer.save_final=false", *_base_args(data)])
        results[name] = out
    first = {name: read_metrics(out / "run")[0] for name, out in results.items()}
    assert (first["one"]["world_size"], first["one"]["engine"]) == (1, "single")
    assert (first["deepspeed"]["world_size"], first["deepspeed"]["engine"]) == (2, "deepspeed")
    ranks = [json.loads((results["deepspeed"] / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert all(0.4 < r["optimizer_state_fraction"] < 0.6 for r in ranks)  # ZeRO partitions the AdamW state
    one = json.loads((results["one"] / "rank-0.json").read_text())
    assert one["optimizer_state_fraction"] == 1.0
    single = torch.load(results["one"] / "final.pt")
    start = load_policy(load_config(str(CONFIG), ["model.dtype=fp32"]).model).model
    moved = max(float((single[k] - p.detach()).abs().max()) for k, p in start.named_parameters())
    assert moved > 1e-4  # training did move the weights: the comparison below is not trivially true
    zero2 = torch.load(results["deepspeed"] / "final.pt")
    assert max(float((single[k] - zero2[k]).abs().max()) for k in single) < 1e-5


@pytest.mark.slow
def test_deepspeed_save_resume_is_exact_and_the_checkpoint_is_a_plain_hf_directory(tmp_path, tiny_model_dir,
                                                                                  port_args):
    """DeepSpeed ZeRO-2 (2 processes): 2 steps straight == 1 step, checkpoint, a new launch resuming for step 2 (the
    weights and both ranks' partitions of the optimizer state round-trip); the checkpoint loads with
    `from_pretrained`."""
    from transformers import AutoModelForImageTextToText

    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", image_size=56)
    runs = {"straight": ["trainer.max_steps=2", "trainer.save_final=false"],
            "first": ["trainer.max_steps=1", "trainer.save_final=true"],  # ends after writing checkpoint step-1
            "resumed": ["trainer.max_steps=2", "trainer.resume=auto", "trainer.save_final=false"]}
    for name, extra in runs.items():
        out = tmp_path / name
        out.mkdir()
        run_dir = tmp_path / ("straight" if name == "straight" else "shared") / "run"
        _run([sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file", str(PRESET),
              str(FIXTURES / "world_size_run.py"), str(CONFIG), str(out), f"trainer.output_dir={run_dir}",
              *_base_args(data), *extra])
    straight, resumed = (torch.load(tmp_path / n / "final.pt") for n in ("straight", "resumed"))
    assert max(float((straight[k] - resumed[k]).abs().max()) for k in straight) < 1e-6
    rows = read_metrics(tmp_path / "shared" / "run")
    assert [r["step"] for r in rows] == [1, 2]
    step1 = torch.load(tmp_path / "first" / "final.pt")
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "shared" / "run" / "checkpoints" / "step-1")
    got = {k: v.detach() for k, v in exported.named_parameters()}
    assert max(float((got[k] - step1[k]).abs().max()) for k in step1) == 0.0


def test_a_deepspeed_checkpoint_resumed_under_another_engine_is_a_one_line_error():
    from mmrl.engine.distributed import DistInfo, TrainingEngine

    policy = torch.nn.Linear(3, 2)
    engine = TrainingEngine(policy, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    optimizer = torch.optim.AdamW(policy.parameters())
    with pytest.raises(UserError, match="DeepSpeed ZeRO partitions.*engine: single") as err:
        engine.load_optimizer_state(optimizer, {"deepspeed_zero": [{}, {}]})
    assert "\n" not in str(err.value)
    engine.load_optimizer_state(optimizer, optimizer.state_dict())  # a plain optimizer state still loads


def test_the_deepspeed_preset_options_mmrl_does_not_support_are_one_line_errors(monkeypatch):
    from mmrl.engine.zero import zero_config

    for key in ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_CLIPPING"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "1.0")
    config = zero_config(1.0)  # the clipping mmrl does is optimizer.max_grad_norm's
    assert (config["zero_optimization"]["stage"], config["gradient_clipping"]) == (2, 1.0)
    monkeypatch.delenv("ACCELERATE_GRADIENT_CLIPPING")
    assert zero_config(None)["gradient_clipping"] == 0.0  # max_grad_norm: null -> DeepSpeed does not clip
    cases = [("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3", "zero_stage: 3"),
             ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu", "offload_optimizer_device: cpu"),
             ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4", "gradient_accumulation_steps: 4"),
             ("ACCELERATE_GRADIENT_CLIPPING", "0.5", "gradient_clipping: 0.5")]
    for key, value, message in cases:
        with monkeypatch.context() as patch:
            patch.setenv(key, value)
            with pytest.raises(UserError, match=message) as err:
                zero_config(1.0)
            assert "\n" not in str(err.value)


# The RL update's hard cases, on fixed groups (tests/fixtures/trainer/exact_update.py): ranks running different
# numbers of micro-batch forwards per optimizer step.
UPDATE_VARIANTS = {
    # reinforce_pp, bnpo, 2 mini-batches x mu 2, and a step where the online filter left the ranks uneven (3 groups:
    # 2 on rank 0, 1 on rank 1).
    "sgd_uneven": {"overrides": ["algorithm.advantage=reinforce_pp", "algorithm.loss_aggregation=bnpo",
                                 "algorithm.mini_batches=2", "algorithm.num_iterations=2",
                                 "trainer.prompts_per_step=4", "optimizer.name=sgd", "optimizer.lr=0.5"],
                   "drop": [2, 3]},
    # AdamW with weight decay, warm-up (the LR schedule reaches DeepSpeed's steps), clipping, and a step whose groups
    # all have zero advantage (no forward on any rank: the step still reduces and moves the weights).
    "adamw_flat_step": {"overrides": ["algorithm.loss_aggregation=dapo", "trainer.prompts_per_step=4",
                                      "optimizer.lr=1e-3", "optimizer.weight_decay=0.1", "optimizer.warmup_steps=3",
                                      "optimizer.max_grad_norm=0.05"],
                        "flat_step": 2},
    # A token budget (trainer.max_tokens_per_micro_batch=45): a group takes 1 to 4 forwards, so the ranks run
    # different numbers of backwards between two reductions.
    "sgd_token_budget": {"overrides": ["algorithm.loss_aggregation=grpo", "algorithm.mini_batches=2",
                                       "trainer.max_tokens_per_micro_batch=45", "trainer.prompts_per_step=4",
                                       "optimizer.name=sgd", "optimizer.lr=0.5"],
                         "drop": [1, 3]},
}


def test_deepspeed_matches_one_process_when_ranks_run_different_numbers_of_forwards(tmp_path, tiny_model_dir,
                                                                                     port_args):
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 12, 0, tmp_path / "data", image_size=56)
    variants = json.dumps(UPDATE_VARIANTS)
    script = str(FIXTURES / "exact_update.py")
    _run([sys.executable, script, str(CONFIG), str(data), str(tmp_path / "one"), variants])
    _run([sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file", str(PRESET), script,
          str(CONFIG), str(data), str(tmp_path / "two"), variants])
    start = load_policy(load_config(str(CONFIG), ["model.dtype=fp32"]).model).model
    initial = {k: p.detach() for k, p in start.named_parameters()}
    for name in UPDATE_VARIANTS:
        ranks = [json.loads((tmp_path / "two" / f"{name}-rank-{r}.json").read_text()) for r in (0, 1)]
        single = json.loads((tmp_path / "one" / f"{name}-rank-0.json").read_text())
        assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
        assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"]
        one, two = torch.load(tmp_path / "one" / f"{name}.pt"), torch.load(tmp_path / "two" / f"{name}.pt")
        assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 1e-4, f"{name}: the weights did not move"
        assert max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-5, name


def test_a_non_finite_loss_on_one_rank_skips_the_deepspeed_step_on_both(tmp_path, tiny_model_dir, port_args):
    """Rank 1's training forwards give NaN logits in step 1: both ranks skip that optimizer step (the weights do not
    move), and step 2 trains normally."""
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", image_size=56)
    out = tmp_path / "out"
    out.mkdir()
    _run([sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file", str(PRESET),
          str(FIXTURES / "poisoned_run.py"), str(CONFIG), str(out), "1", f"trainer.output_dir={out / 'run'}",
          "trainer.max_steps=2", "trainer.save_final=false", *_base_args(data)])
    rows = read_metrics(out / "run")
    assert [(r["step"], r["skipped_step"]) for r in rows] == [(1, 1.0), (2, 0.0)]
    assert rows[0]["engine"] == "deepspeed"
    initial, step1, final = (torch.load(out / f"{n}.pt") for n in ("initial", "step-1", "final"))
    assert all(torch.equal(step1[k], initial[k]) for k in initial), "a skipped step must not touch the weights"
    assert max(float((final[k] - initial[k]).abs().max()) for k in initial) > 1e-4  # step 2 did train


@pytest.mark.slow
def test_sft_under_deepspeed_matches_one_process(tmp_path, tiny_model_dir, port_args):
    """SFT (4 samples per step in 2 micro-batches, 3 steps) on 1 process and on 2 DeepSpeed ZeRO-2 processes: the
    final checkpoints (plain HF directories, written by the main process) hold the same weights within 1e-5."""
    from safetensors.torch import load_file

    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 16, 0, tmp_path / "data", forms=["open"], image_size=56)
    args = [f"data.train={data}", "trainer.report_to=[jsonl]", "trainer.progress=false", "trainer.batch_size=4",
            "trainer.max_steps=3", "trainer.grad_accumulation=2", "optimizer.lr=2e-3", "model.dtype=fp32",
            "trainer.device=cpu"]
    script = [str(FIXTURES / "sft_run.py"), str(CONFIG)]
    _run([sys.executable, *script, f"trainer.output_dir={tmp_path / 'one'}", *args])
    _run([sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file", str(PRESET), *script,
          f"trainer.output_dir={tmp_path / 'two'}", *args])
    one, two = (load_file(tmp_path / n / "checkpoints" / "step-3" / "model.safetensors") for n in ("one", "two"))
    assert sorted(one) == sorted(two)
    start = load_policy(load_config(str(CONFIG), ["model.dtype=fp32"]).model).model.state_dict()
    assert max(float((one[k] - start[k]).abs().max()) for k in one if k in start) > 1e-4  # SFT moved the weights
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
