"""`model.compile`: the update's decoder layers through torch.compile (real inductor, tiny model, fp32, CPU) give the
eager update's log-probs and weights up to float rounding; the rollout is left eager."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.models.compile import compiled_decoder_layers, decoder_layers
from mmrl.models.logprobs import completion_logprobs
from mmrl.rl.trainer import GRPOLoop
from mmrl.rl.training_batch import training_batch
from mmrl.rl.update import policy_update

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "trainer"))

from fixed_groups import fixed_group  # noqa: E402


def make_trainer(data: Path, out: Path, *extra: str) -> GRPOLoop:
    overrides = [f"data.train={data}", f"trainer.output_dir={out}", "trainer.report_to=[jsonl]", "trainer.progress=false",
                 "model.dtype=fp32", "trainer.device=cpu", "optimizer.name=sgd", "optimizer.lr=0.5", *extra]
    return GRPOLoop(load_config(CONFIG, overrides))


def test_a_model_without_decoder_layers_is_a_one_line_error():
    with pytest.raises(UserError, match=r"model.compile: no text decoder layers .* set model.compile=false"):
        decoder_layers(torch.nn.Linear(2, 2))
    with compiled_decoder_layers(torch.nn.Linear(2, 2), enabled=False):  # off: nothing is looked up
        pass


@pytest.mark.slow
def test_the_compiled_update_matches_the_eager_one(tmp_path):
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 4, 0, tmp_path / "data", image_size=56)
    eager = make_trainer(data, tmp_path / "eager")
    compiled = make_trainer(data, tmp_path / "compiled", "model.compile=true")
    # two prompts of different lengths (the second forward recompiles with dynamic shapes), rewards with spread
    groups = [fixed_group(eager, 0, i, group_size=4, length=8) for i in range(2)]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = compiled.run.model
    layers = decoder_layers(model)
    # with gradients on, as the training forward (so the update below reuses these graphs)
    want = [completion_logprobs(model, g.prompt, g.completion_ids, g.completion_mask).detach() for g in groups]
    with compiled_decoder_layers(model):
        got = [completion_logprobs(model, g.prompt, g.completion_ids, g.completion_mask).detach() for g in groups]
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0, "nothing was compiled"
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager again after the block (the rollout)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())

    stage = eager.schedule.stage_at(0)
    before = {k: v.detach().clone() for k, v in eager.run.model.named_parameters()}
    eager_metrics = policy_update(eager.run, training_batch(eager.run, copy.deepcopy(groups), stage, eager.reference),
                                  stage)
    compiled_metrics = policy_update(compiled.run, training_batch(compiled.run, copy.deepcopy(groups), stage,
                                                                  compiled.reference), stage)
    for trainer in (eager, compiled):
        trainer.run.close()
    assert compiled_metrics["loss"] == pytest.approx(eager_metrics["loss"], rel=1e-4, abs=1e-6)
    a = dict(eager.run.model.named_parameters())
    diff = max(float((a[k] - p).detach().abs().max()) for k, p in compiled.run.model.named_parameters())
    moved = max(float((a[k] - before[k]).abs().max()) for k in a)
    print(f"compiled vs eager update: max abs weight diff {diff:.3g} (moved {moved:.3g})")
    assert moved > 1e-3 and diff <= 1e-5
