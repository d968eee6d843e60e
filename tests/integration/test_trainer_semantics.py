"""What the GRPO trainer's state and schedule mean: samplers survive two resumes, the LR schedule follows the steps
actually run, and the naive rollout backend samples with exactly the configured parameters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.data.collate import encode_one
from mmrl.generation import SamplingParams
from mmrl.generation.hf import HFNaiveBackend
from mmrl.optim import lr_factor
from mmrl.rl.trainer import GRPOLoop, _key
from mmrl.runs.logger import read_metrics

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "trainer"
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 12, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


def overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.train={data}", f"trainer.output_dir={out}", "trainer.report_to=[jsonl]", "trainer.progress=false",
            "trainer.save_steps=0", "trainer.sample_steps=0", "rollout.max_completion_length=4",
            f"rewards=[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}]", *extra]


def test_a_sampler_restored_but_not_yet_used_is_saved_again(synthetic_data, tmp_path):
    """Stages A (data 1) -> B (data 2) -> A: resuming inside B twice must keep A's position for its second visit."""
    other = synthetic_data.parent / "other.jsonl"
    shutil.copy(synthetic_data, other)
    stages = (f"[{{name: a, steps: 1, data: [{{path: '{synthetic_data}'}}]}}, "
              f"{{name: b, steps: 2, data: [{{path: '{other}'}}]}}, {{name: a2, steps: 1, data: [{{path: '{synthetic_data}'}}]}}]")
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, f"stages={stages}"))
    spec_a, spec_b = cfg.stages[0].data, cfg.stages[1].data
    first = GRPOLoop(cfg)
    first._sampler_for(tuple(spec_a)).next(3)  # stage a drew 3 prompts
    first._sampler_for(tuple(spec_b)).next(2)
    saved = first.state()  # checkpoint 1, inside stage b

    second = GRPOLoop(cfg)
    second._restore(saved)
    second._sampler_for(tuple(spec_b)).next(2)  # only stage b runs before checkpoint 2
    again = second.state()
    assert again["samplers"][_key(tuple(spec_a))] == saved["samplers"][_key(tuple(spec_a))]
    assert again["samplers"][_key(tuple(spec_b))]["position"] == 4

    third = GRPOLoop(cfg)
    third._restore(again)
    assert third._sampler_for(tuple(spec_a)).position == 3  # stage a2 continues where stage a stopped


def test_the_lr_schedule_follows_a_stage_ended_early(synthetic_data, tmp_path):
    stages = "[{name: a, steps: 3, until_metric: accuracy, until_value: 0.0}, {name: b, steps: 2}]"
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, f"stages={stages}", "trainer.eval_steps=1",
                                        f"data.eval={synthetic_data}", "eval.limit=1", "eval.max_new_tokens=2",
                                        "optimizer.schedule=linear", "optimizer.lr=1e-3", "trainer.prompts_per_step=1"))
    GRPOLoop(cfg).train()
    rows = read_metrics(tmp_path)
    # The untrained model scores 0 >= 0 at the first eval: stage a ends after 1 step, so 3 steps run, not 5.
    assert [r["stage_name"] for r in rows] == ["a", "b", "b"]
    # rows[k]["lr"] is the rate of step k (0-based), the one after the row's step: the last step run (2) decays
    # over the 3 steps actually run.
    assert rows[1]["lr"] == pytest.approx(1e-3 * lr_factor(2, cfg.optimizer, 3), rel=1e-9)
    assert rows[1]["lr"] != pytest.approx(1e-3 * lr_factor(2, cfg.optimizer, 5), rel=1e-3)


def test_the_naive_backend_ignores_the_checkpoints_generation_config(synthetic_data, tmp_path):
    trainer = GRPOLoop(load_config(CONFIG, overrides(synthetic_data, tmp_path)))
    model, processor = trainer.run.model, trainer.run.processor
    prompt = encode_one(processor, trainer._load(tuple(trainer.cfg.data.train))[0], trainer.cfg.data)
    backend = HFNaiveBackend(model, processor)

    def sample():
        return backend.rollout([prompt], SamplingParams(n=4, max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0),
                               generator=torch.Generator().manual_seed(7)).completion_ids

    clean = sample()
    hostile = model.generation_config
    # A checkpoint config that forbids every token the clean run sampled: applied, it could not give the same samples.
    hostile.repetition_penalty, hostile.top_k = 1e4, 3
    hostile.suppress_tokens = sorted(set(clean.flatten().tolist()))
    assert torch.equal(sample(), clean), "the checkpoint's generation_config changed the sampling"
    assert model.generation_config is hostile and hostile.repetition_penalty == 1e4  # restored after generating
