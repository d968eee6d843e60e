"""Multi-turn GRPO on two DDP processes (accelerate launch, gloo): each rank plays its own share of the step's
starts, and the run trains to the weights of one process (the same world-size invariance as single-turn)."""

from __future__ import annotations

import json

import torch

from tests.integration.launch import FIXTURES, max_difference, ranks, world_size_run

ENV_ARGS = [
    f"env.name={FIXTURES / 'painter_env.py'}:Painter",
    "env.kwargs={turns: 2}",
    "env.max_turns=3",
    "env.max_turn_tokens=5",
    "data.min_pixels=3136",
    "data.max_pixels=3136",
    "rollout.group_size=2",
    "trainer.prompts_per_step=2",
    "trainer.max_steps=2",
    "trainer.save_final=false",
    "trainer.save_steps=0",
    "trainer.sample_steps=0",
    "trainer.report_to=[jsonl]",
    "trainer.progress=false",
    "model.dtype=fp32",
    "trainer.device=cpu",
    "optimizer.lr=1e-3",
]


def test_two_processes_play_their_own_episodes_and_match_one(tmp_path, port_args):
    data = tmp_path / "starts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "prompt": "go", "answer": "x", "meta": {"seed": i}}) + "\n" for i in range(8)
        )
    )
    args = [f"data.train={data}", *ENV_ARGS]
    one = world_size_run("one", tmp_path / "one", port_args, [*args, f"trainer.output_dir={tmp_path / 'one' / 'run'}"])
    two = world_size_run("ddp", tmp_path / "two", port_args, [*args, f"trainer.output_dir={tmp_path / 'two' / 'run'}"])
    assert [(r["rank"], r["world_size"]) for r in ranks(two)] == [(0, 2), (1, 2)]
    rows = [json.loads(line) for line in (two / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["episode/termination/done"] == 4  # both ranks' episodes counted (2 starts x G=2)
    single = [json.loads(line) for line in (one / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode/return"] for r in rows] == [r["episode/return"] for r in single]
    before, after = torch.load(one / "final.pt"), torch.load(two / "final.pt")
    # the same episodes (returns above) and updates; only float summation order differs (gradient all-reduce)
    assert max_difference(before, after) < 1e-4
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(rows, single))
