"""Multi-turn GRPO through the trainer: a run with a user environment (`file.py:Class`, images in later turns) trains,
logs per-episode metrics, saves every turn's images with the samples, and a resume mid-run reproduces the run
exactly."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmrl.preflight import load_config
from mmrl.rl.trainer import GRPOLoop

ENV = (Path(__file__).resolve().parents[1] / "fixtures" / "trainer" / "painter_env.py").read_text()


def _config(tmp_path, out, steps, **extra):
    env = tmp_path / "painter.py"
    env.write_text(ENV)
    data = tmp_path / "starts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "prompt": "go", "answer": "x", "meta": {"seed": i}}) + "\n" for i in range(8)
        )
    )
    overrides = [
        f"data.train={data}",
        f"env.name={env}:Painter",
        "env.kwargs={turns: 2}",
        "env.max_turns=3",
        "env.max_turn_tokens=6",
        "data.min_pixels=3136",
        "data.max_pixels=3136",
        "rollout.group_size=2",
        "trainer.prompts_per_step=2",
        f"trainer.max_steps={steps}",
        "trainer.save_steps=2",
        "trainer.sample_steps=1",
        "optimizer.lr=1e-3",
        f"trainer.output_dir={out}",
        "trainer.report_to=[jsonl]",
        "trainer.seed=3",
        f"data.eval={data}",
        "trainer.eval_steps=2",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(None, overrides)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_multiturn_run_trains_logs_episodes_and_resumes_exactly(tmp_path):
    straight = GRPOLoop(_config(tmp_path, tmp_path / "straight", 4))
    before = _params(straight.run.model)
    straight.train()
    after = _params(straight.run.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["episode/turns"] == 2 and row["episode/termination/done"] == 4 for row in rows)
    # held-out starts (data.eval) played greedily every eval_steps: one episode each
    assert [r["eval/episode/termination/done"] for r in rows if "eval/episode/success" in r] == [8, 8]
    sample = json.loads((tmp_path / "straight" / "samples" / "step-1.jsonl").read_text().splitlines()[0])
    assert len(sample["turns"]) == 2 and len(sample["observation_images"]) == 1 and len(sample["images"]) == 1
    assert all(
        (tmp_path / "straight" / "samples" / "images").joinpath(p.rsplit("/", 1)[-1]).is_file()
        for p in sample["observation_images"] + sample["images"]
    )

    split = GRPOLoop(_config(tmp_path, tmp_path / "split", 2))
    split.train()
    resumed = GRPOLoop(
        _config(
            tmp_path, tmp_path / "split", 4, **{"trainer.resume": str(tmp_path / "split" / "checkpoints" / "step-2")}
        )
    )
    resumed.train()
    final = _params(resumed.run.model)
    assert all(torch.equal(after[k], final[k]) for k in after)
    resumed_rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed_rows[-2:]] == [r["loss"] for r in rows[-2:]]


def test_a_family_episodes_cannot_run_on_is_refused_before_a_step(tmp_path, real_family_models):
    import pytest

    from mmrl.errors import UserError

    cfg = _config(tmp_path, tmp_path / "refused", 1, **{"model.name_or_path": real_family_models("smolvlm")})
    with pytest.raises(UserError, match="multi-turn episodes run on Qwen2-VL, Qwen2.5-VL and Qwen3-VL models"):
        GRPOLoop(cfg)
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()
