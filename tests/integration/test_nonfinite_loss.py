"""A non-finite loss whose gradients are finite still skips the optimizer step: the guard checks the loss itself,
not only the gradient norm (2 DeepSpeed processes, where DeepSpeed itself only checks gradients:
tests/integration/test_deepspeed.py).

In mmrl's registered losses every detached input (advantages, old and reference log-probs, IS weights) multiplies a
term with a gradient, so a non-finite one makes the gradient non-finite too (checked: an infinite advantage on a
clipped token gives an infinite gradient as well, since the unclipped branch of the min carries it). A non-finite
loss with finite gradients needs a non-finite term without gradient, which a loss variant can add; the test adds an
infinite constant to one step's micro-batch losses.
"""

from __future__ import annotations

import math

import torch

from mmrl.config import load_config
from mmrl.rl import update
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics
from tests.integration.launch import CONFIG, max_difference, train_args


def test_a_non_finite_loss_with_finite_gradients_skips_the_step(tmp_path, tiny_model_dir, monkeypatch):
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", image_size=56)
    cfg = load_config(str(CONFIG), [*train_args(data), f"trainer.output_dir={tmp_path / 'run'}",
                                    "trainer.max_steps=2", "trainer.save_final=false"])
    trainer = GRPOLoop(cfg)
    model = trainer.run.model
    snapshots = [{k: v.detach().clone() for k, v in model.named_parameters()}]
    steps: list[float] = []
    step = trainer.run.optimizer_step

    def counted(loss_value: float):
        steps.append(loss_value)
        result = step(loss_value)
        snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return result

    class InfiniteLoss(update.PolicyLoss):
        def aggregate(self, *args, **kwargs):
            loss = super().aggregate(*args, **kwargs)
            return loss + math.inf if not steps else loss  # step 1 only; a constant: the gradient is unchanged

    monkeypatch.setattr(trainer.run, "optimizer_step", counted)
    monkeypatch.setattr(update, "PolicyLoss", InfiniteLoss)
    trainer.train()
    rows = read_metrics(tmp_path / "run")
    assert [r["skipped_step"] for r in rows] == [1.0, 0.0]
    assert rows[0]["loss"] is None  # not finite (metrics.jsonl writes it as null)
    assert math.isfinite(rows[0]["grad_norm"]) and rows[0]["grad_norm"] > 0  # the gradients were finite: the loss
    assert all(torch.equal(snapshots[1][k], snapshots[0][k]) for k in snapshots[0])  # ... alone skipped the step
    assert max_difference(snapshots[2], snapshots[0]) > 1e-4  # step 2 trained
