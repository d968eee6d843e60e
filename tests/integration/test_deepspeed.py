"""DeepSpeed ZeRO-2 as the training engine: real processes (accelerate launch, CPU preset, gloo), real DeepSpeed."""

from __future__ import annotations

import pytest
import torch

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.models.loading import load_policy
from mmrl.runs.logger import read_metrics
from tests.integration.launch import CONFIG, FIXTURES, launcher, max_difference, run, train_args, world_size_run

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'mmrl[deepspeed]')")
# 1 process vs 2 ZeRO-2 processes (with a KL reference, with LoRA, with ranks running different numbers of forwards):
# tests/integration/test_distributed.py


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
        run_dir = tmp_path / ("straight" if name == "straight" else "shared") / "run"
        world_size_run("deepspeed", tmp_path / name, port_args, [f"trainer.output_dir={run_dir}", *train_args(data), *extra])
    straight, resumed = (torch.load(tmp_path / n / "final.pt") for n in ("straight", "resumed"))
    assert max_difference(straight, resumed) < 1e-6
    rows = read_metrics(tmp_path / "shared" / "run")
    assert [r["step"] for r in rows] == [1, 2]
    step1 = torch.load(tmp_path / "first" / "final.pt")
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "shared" / "run" / "checkpoints" / "step-1")
    got = {k: v.detach() for k, v in exported.named_parameters()}
    assert max_difference(got, step1) == 0.0


def test_an_optimizer_state_resumed_under_the_wrong_engine_is_a_one_line_error():
    from mmrl.checkpoints.store import check_optimizer_kind

    plain = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters()).state_dict()
    refused = [({"deepspeed_zero": [{}, {}]}, "single", "DeepSpeed ZeRO partitions.*engine: single"),
               (plain, "deepspeed", "from a run without DeepSpeed"),
               ({"deepspeed_zero": [{}, {}, {}]}, "deepspeed", "from 3 processes.*same number of processes \\(2\\)")]
    for state, engine, says in refused:
        with pytest.raises(UserError, match=says) as err:
            check_optimizer_kind(state, engine, world_size=2, partitioned=engine == "deepspeed")
        assert "\n" not in str(err.value)
    check_optimizer_kind(plain, "ddp", world_size=2, partitioned=False)  # what each engine wrote still loads
    check_optimizer_kind({"deepspeed_zero": [{}, {}]}, "deepspeed", world_size=2, partitioned=True)


def test_the_deepspeed_preset_options_mmrl_does_not_support_are_one_line_errors(monkeypatch):
    from mmrl.parallel.zero import zero_config

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


def test_a_non_finite_loss_on_one_rank_skips_the_deepspeed_step_on_both(tmp_path, tiny_model_dir, port_args):
    """Step 1: rank 1's loss is infinite while its gradients stay finite (DeepSpeed's own overflow check sees only
    gradients: mmrl poisons the reduction pass so it skips); step 2: rank 0's training forwards give NaN logits (loss
    and gradients NaN). Both ranks skip both optimizer steps (the weights do not move), and step 3 trains normally."""
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", image_size=56)
    out = tmp_path / "out"
    out.mkdir()
    run([*launcher("deepspeed", port_args), str(FIXTURES / "poisoned_run.py"), str(CONFIG), str(out),
         "1:loss,0:logits", f"trainer.output_dir={out / 'run'}", "trainer.max_steps=3", "trainer.save_final=false",
         *train_args(data)])
    rows = read_metrics(out / "run")
    assert [(r["step"], r["skipped_step"]) for r in rows] == [(1, 1.0), (2, 1.0), (3, 0.0)]
    assert rows[0]["engine"] == "deepspeed" and rows[0]["loss"] is None  # not finite: written as null
    initial, step1, step2, final = (torch.load(out / f"{n}.pt") for n in ("initial", "step-1", "step-2", "final"))
    for name, weights in (("step 1", step1), ("step 2", step2)):
        assert all(torch.equal(weights[k], initial[k]) for k in initial), f"{name}: a skipped step moved the weights"
    assert max_difference(final, initial) > 1e-4  # step 3 did train


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
    run([*launcher("one", port_args), *script, f"trainer.output_dir={tmp_path / 'one'}", *args])
    run([*launcher("deepspeed", port_args), *script, f"trainer.output_dir={tmp_path / 'two'}", *args])
    one, two = (load_file(tmp_path / n / "checkpoints" / "step-3" / "model.safetensors") for n in ("one", "two"))
    assert sorted(one) == sorted(two)
    start = load_policy(load_config(str(CONFIG), ["model.dtype=fp32"]).model).model.state_dict()
    assert max(float((one[k] - start[k]).abs().max()) for k in one if k in start) > 1e-4  # SFT moved the weights
    assert max_difference(one, two) < 1e-5
