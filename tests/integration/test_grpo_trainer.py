"""GRPO trainer on the tiny model and synthetic data: learning signal, exact resume, crash-safe checkpoints, NaN guard,
two real processes."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from mmrl.checkpoints.store import find_latest, list_checkpoints
from mmrl.config import load_config
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics
from mmrl.runs.training_run import TrainingDiverged

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "trainer"
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"



@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 12, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


def overrides(data: Path, out: Path, **extra) -> list[str]:
    base = {
        "data.train": str(data),
        "trainer.output_dir": str(out),
        "trainer.report_to": "[jsonl]",
        "trainer.progress": "false",
        "trainer.save_steps": 0,
        "trainer.sample_steps": 0,
        "rollout.max_completion_length": 6,
        "rewards": f"[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}]",
        "optimizer.lr": 1e-3,
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_one_step_changes_the_parameters_and_logs_metrics(synthetic_data, tmp_path):
    # Two zero-weight rewards ride along: overlong takes its max length from the stage (6 tokens), and iou cannot
    # score these text golds, which the metrics count as reward/iou/unscorable.
    rewards = (f"[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}, {{name: overlong, weight: 0}},"
               " {name: iou, weight: 0}]")
    trainer = GRPOLoop(load_config(CONFIG, overrides(synthetic_data, tmp_path, **{"trainer.max_steps": 1,
                                                                                    "rewards": rewards})))
    before = params(trainer.run.model)
    trainer.train()
    after = params(trainer.run.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed"
    assert any("visual" in k for k in changed), "the vision tower received no gradient"
    assert any("language_model" in k for k in changed)
    (row,) = read_metrics(tmp_path)
    assert row["step"] == 1 and row["loss"] is not None and row["grad_norm"] > 0
    for key in ("reward/total", "completion_length/mean", "time/rollout", "time/update", "lr", "samples_per_s"):
        assert key in row, key
    assert -1.0 <= row["reward/overlong"] <= 0.0 and "reward/overlong/errors" not in row
    assert row["reward/iou/unscorable"] > 0 and row["unscorable"] == 0  # zero weight: never blocks the total
    # The prompt and its image were encoded once per group, not G times.
    assert row["rollout/vision_encoder_calls"] == 2
    # Reward scoring is timed on its own (a part of the rollout phase) and the update counts its forwards.
    assert 0 < row["rollout/reward_seconds"] <= row["time/rollout"]
    assert row["update/micro_batches"] >= 1
    # The final checkpoint is a plain HF model.
    latest = find_latest(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(latest)
    assert torch.equal(dict(reloaded.named_parameters())["lm_head.weight"], after["lm_head.weight"])
    assert (tmp_path / "config.yaml").is_file()


TWO_STAGES = ("[{name: wide, steps: 2, group_size: 4, max_completion_length: 6},"
              " {name: narrow, steps: 4, group_size: 2, max_completion_length: 4}]")


def test_two_stage_run_switches_and_a_resume_inside_stage_2_reproduces_it(synthetic_data, tmp_path):
    straight = tmp_path / "straight"
    trainer = GRPOLoop(load_config(CONFIG, overrides(synthetic_data, straight, stages=TWO_STAGES)))
    trainer.train()
    straight_params = params(trainer.run.model)
    rows = read_metrics(straight)
    assert [r["stage_name"] for r in rows] == ["wide"] * 2 + ["narrow"] * 4
    # Stage overrides took effect: 2 prompts x G=4 completions, then 2 x G=2, each at most its max length.
    assert [r["completion_length/max"] <= (6 if r["stage"] == 0 else 4) for r in rows] == [True] * 6
    assert rows[0]["rollout/generated_tokens"] > rows[-1]["rollout/generated_tokens"]

    split = tmp_path / "split"
    first = GRPOLoop(load_config(CONFIG, overrides(synthetic_data, split, stages=TWO_STAGES,
                                                      **{"trainer.save_steps": 3})))
    # Stop after step 3 (inside stage 2) as an interrupted run would, keeping its checkpoint.
    first.schedule.stages[1] = first.schedule.stages[1].model_copy(update={"steps": 1})
    first.train()
    assert [p.name for p in list_checkpoints(split)][-1] == "step-3"
    resumed = GRPOLoop(load_config(CONFIG, overrides(synthetic_data, split, stages=TWO_STAGES,
                                                        **{"trainer.resume": str(split / "checkpoints" / "step-3")})))
    resumed.train()
    resumed_params = params(resumed.run.model)

    losses_a = [r["loss"] for r in read_metrics(straight)]
    losses_b = [r["loss"] for r in read_metrics(split)]
    assert [r["step"] for r in read_metrics(split)] == [1, 2, 3, 4, 5, 6]
    assert losses_a == losses_b
    assert all(torch.equal(straight_params[k], resumed_params[k]) for k in straight_params)


def test_killed_during_save_leaves_the_previous_checkpoint_usable(synthetic_data, tmp_path):
    args = overrides(synthetic_data, tmp_path, **{"trainer.max_steps": 3, "trainer.save_steps": 1,
                                                  "trainer.keep_last": 3})
    result = subprocess.run([sys.executable, str(FIXTURES / "crash_in_save.py"), str(CONFIG), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-1"]
    assert any(p.name.startswith(".step-2.staging") for p in (tmp_path / "checkpoints").iterdir())
    AutoModelForImageTextToText.from_pretrained(find_latest(tmp_path))  # the previous one still loads
    # The same settings as the killed run (its last two, max_steps and keep_last, given again or free to change):
    # dropping optimizer.lr too resumed silently at another learning rate until resume refused a changed config.
    trainer = GRPOLoop(load_config(CONFIG, args[:-2] + [f"trainer.output_dir={tmp_path}", "trainer.max_steps=3",
                                                           "trainer.resume=auto"]))
    assert trainer.run.resume_from.name == "step-1"
    trainer.train()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_a_non_finite_loss_skips_the_step(synthetic_data, tmp_path):
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, **{"trainer.max_steps": 1}))
    trainer = GRPOLoop(cfg)
    model = trainer.run.model
    before = params(model)

    def poison(_module, _inputs, output):
        return output * float("nan") if torch.is_grad_enabled() else output

    handle = model.lm_head.register_forward_hook(poison)
    trainer.train()
    handle.remove()
    after = params(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN step must not touch the weights"
    (row,) = read_metrics(tmp_path)
    assert row["skipped_step"] == 1.0

    shutil.rmtree(tmp_path / "again", ignore_errors=True)
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path / "again",
                                        **{"trainer.max_steps": 3, "trainer.max_nonfinite_steps": 2}))
    trainer = GRPOLoop(cfg)
    trainer.run.model.lm_head.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="2 optimizer steps in a row"):
        trainer.train()


def test_lora_with_kl_uses_the_adapter_free_reference(synthetic_data, tmp_path):
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, **{
        "trainer.max_steps": 2, "model.lora.enabled": "true", "model.lora.r": 4, "algorithm.beta": 0.1,
        "optimizer.lr": 1e-2}))
    trainer = GRPOLoop(cfg)
    trainer.train()
    rows = read_metrics(tmp_path)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert rows[1]["kl"] > 0  # the adapter moved the policy away from the reference
    assert (find_latest(tmp_path) / "adapter_model.safetensors").is_file()

    # `mmrl export` merges the adapter into a plain HF model that computes what the adapted policy computes.
    from mmrl.cli import main

    assert main(["export", str(find_latest(tmp_path)), str(tmp_path / "merged")]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    trainer.run.model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, trainer.run.model(input_ids=ids).logits, atol=1e-4)
    # A LoRA checkpoint also loads as model.name_or_path (on its base model), e.g. for the next pipeline step.
    from mmrl.models.loading import load_policy

    again = load_policy(load_config(None, [f"model.name_or_path={find_latest(tmp_path)}"]).model, for_training=False)
    with torch.no_grad():
        assert torch.allclose(again.model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_two_processes_keep_identical_parameters(synthetic_data, tmp_path, port_args):
    out = tmp_path / "ranks"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = overrides(synthetic_data, tmp_path / "run", **{"trainer.max_steps": 2, "trainer.prompts_per_step": 2})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file",
           str(ROOT / "configs" / "accelerate" / "ddp_cpu_2proc.yaml"), str(FIXTURES / "ddp_params.py"),
           str(CONFIG), str(out), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted((out / f"rank-{r}.txt").read_text().split() for r in (0, 1))
    assert lines[0][1] == lines[1][1] == "2"
    assert lines[0][0] == lines[1][0]
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    # Each rank rolled out its own prompt (1 of the 2 per step) and encoded its image once.
    assert rows[0]["samples_per_s"] > 0
    assert rows[0]["rollout/vision_encoder_calls"] == 1


def test_online_filter_drops_flat_groups_and_refills(synthetic_data, tmp_path):
    # The untrained model never answers right: every group's accuracy mean is 0, outside (0, 1), so each round is
    # dropped and refilled until max_tries; with nothing left, the step changes nothing.
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, **{
        "trainer.max_steps": 1, "rewards": "[{name: accuracy}, {name: format, weight: 0.5}]",
        "algorithm.online_filter": "{enabled: true, metric: accuracy, low: 0.0, high: 1.0, max_tries: 3}"}))
    trainer = GRPOLoop(cfg)
    before = params(trainer.run.model)
    trainer.train()
    (row,) = read_metrics(tmp_path)
    assert row["filtered_groups"] == 2 * 3  # 2 prompts per round, 3 rounds
    assert all(torch.equal(before[k], v) for k, v in params(trainer.run.model).items())


def test_online_filter_counters_cover_every_rollout_round(synthetic_data, tmp_path):
    # Some prompts' groups are flat (dropped and refilled), so a step rolls out more than once; its rollout and
    # reward counters must be the totals of all those rounds, not of the last one.
    flat = f"{FIXTURES / 'flat_for_some.py'}:reward"
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, **{
        "trainer.max_steps": 1, "rewards": f"[{{name: '{flat}'}}, {{name: iou, weight: 0}}]",
        "algorithm.online_filter": f"{{enabled: true, metric: '{flat}', low: 0.0, high: 1.0, max_tries: 4}}"}))
    trainer = GRPOLoop(cfg)
    rounds: list[dict] = []
    rollout = trainer.backend.rollout

    @functools.wraps(rollout)  # keeps the signature: collect_step passes per-prompt seeds when it sees them
    def recording_rollout(*args, **kwargs):
        batch = rollout(*args, **kwargs)
        rounds.append(dict(batch.counters))
        return batch

    trainer.backend.rollout = recording_rollout
    trainer.train()
    (row,) = read_metrics(tmp_path)
    assert len(rounds) >= 2 and row["filtered_groups"] >= 1  # a retry happened
    for key in ("generated_tokens", "prefill_tokens", "decode_steps", "vision_encoder_calls", "images_encoded"):
        assert row[f"rollout/{key}"] == sum(r[key] for r in rounds), key
    assert row["rollout/generated_tokens"] > rounds[-1]["generated_tokens"]
    assert row["rollout/vision_encoder_calls"] == 2 * len(rounds)  # 2 prompts a round, one image each
    # Reward counters count items: iou cannot score these golds, so every completion of every round.
    assert row["reward/iou/unscorable"] == len(rounds) * 2 * cfg.rollout.group_size
    # The entropy stays a mean: over every token sampled in every round.
    assert row["entropy"] == pytest.approx(sum(r["entropy_sum"] for r in rounds) /
                                           sum(r["entropy_tokens"] for r in rounds))
    assert 0 < row["rollout/reward_seconds"] <= row["time/rollout"]


def test_eval_during_training_uses_the_same_verifiers(synthetic_data, tmp_path):
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, **{
        "trainer.max_steps": 2, "trainer.eval_steps": 2, "data.eval": str(synthetic_data), "eval.limit": 3,
        "eval.max_new_tokens": 4}))
    GRPOLoop(cfg).train()
    rows = read_metrics(tmp_path)
    assert "eval/accuracy" not in rows[0] and rows[1]["eval/accuracy"] == 0.0
    report = json.loads((tmp_path / "eval" / "step-2" / "report.json").read_text())
    assert report["n"] == 3


def test_resume_when_the_vision_tower_never_received_gradients(tmp_path):
    """EasyR1 #275: text-only data never runs the (trainable) vision tower, so AdamW holds no state for it; saving and
    resuming must still work and continue exactly."""
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1),
                                        "task": "count", "images": []}) + "\n" for i in range(6)))
    straight = GRPOLoop(load_config(CONFIG, overrides(data, tmp_path / "a", **{"trainer.max_steps": 4})))
    vision_before = {k: v for k, v in params(straight.run.model).items() if "visual" in k}
    straight.train()
    assert all(torch.equal(v, dict(straight.run.model.named_parameters())[k]) for k, v in vision_before.items())

    GRPOLoop(load_config(CONFIG, overrides(data, tmp_path / "b", **{"trainer.max_steps": 2}))).train()
    resumed = GRPOLoop(load_config(CONFIG, overrides(data, tmp_path / "b", **{"trainer.max_steps": 4,
                                                                                 "trainer.resume": "auto"})))
    resumed.train()
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [r["loss"] for r in read_metrics(tmp_path / "b")]
    a, b = params(straight.run.model), params(resumed.run.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_and_a_resume_leave_the_updates_unchanged(synthetic_data, tmp_path):
    """Two GRPO steps with checkpointed decoder layers (the shared-prefix forward replays the prompt's layers in
    backward), the second one resumed from a checkpoint, give the updates of the run without checkpointing.
    Step 1's loss is the same either way; step 2's loss and the parameters show whether step 1's gradient was right
    (on transformers 5.17 a replay that appended after zeros moved the parameters elsewhere)."""
    def run(out: Path, **extra) -> GRPOLoop:
        trainer = GRPOLoop(load_config(CONFIG, overrides(synthetic_data, out, **extra)))
        trainer.train()
        return trainer

    plain = run(tmp_path / "plain", **{"trainer.max_steps": 2})
    checkpointed = {"model.gradient_checkpointing": "true"}
    run(tmp_path / "ckpt", **checkpointed, **{"trainer.max_steps": 1, "trainer.save_steps": 1})
    resumed = run(tmp_path / "ckpt", **checkpointed, **{"trainer.max_steps": 2, "trainer.resume": "auto"})
    assert all(layer.gradient_checkpointing for layer in resumed.run.model.model.language_model.layers)
    expected, got = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "ckpt")
    assert [r["step"] for r in got] == [1, 2]
    for want, have in zip(expected, got, strict=True):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7)
        assert have["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    a, b = params(plain.run.model), params(resumed.run.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
