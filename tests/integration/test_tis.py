"""Truncated importance sampling (TIS) against the rollout/trainer log-prob mismatch, on the real tiny model (fp32,
CPU) with the HF backend, which returns its sampler's log-probs as vLLM does."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.models.dropout import disable_dropout
from mmrl.models.logprobs import completion_logprobs
from mmrl.rl.experience import rollout_groups
from mmrl.rl.losses import policy_loss, truncated_is_weights
from mmrl.rl.trainer import GRPOLoop
from mmrl.rl.training_batch import training_batch
from mmrl.rl.update import policy_update

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "trainer"))

from fixed_groups import global_batch  # noqa: E402


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 8, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


def make_trainer(data: Path, out: Path, *extra: str) -> GRPOLoop:
    overrides = [f"data.train={data}", f"trainer.output_dir={out}", "trainer.report_to=[jsonl]", "trainer.progress=false",
                 "model.dtype=fp32", "trainer.device=cpu", "optimizer.name=sgd", "optimizer.lr=0.1",
                 "optimizer.max_grad_norm=null", *extra]
    return GRPOLoop(load_config(CONFIG, overrides))


def trainer_logp(trainer: GRPOLoop, group) -> torch.Tensor:
    disable_dropout(trainer.run.model)
    with torch.no_grad():
        return completion_logprobs(trainer.run.model, group.prompt, group.completion_ids, group.completion_mask,
                                   temperature=trainer.cfg.rollout.temperature)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_tis_cap_default_is_trls_token_level_cap():
    assert load_config(CONFIG, []).algorithm.tis_cap == 2.0
    assert load_config(CONFIG, ["algorithm.tis_cap=null"]).algorithm.tis_cap is None


def test_hf_sampler_logprobs_agree_with_the_trainer_in_fp32(synthetic_data, tmp_path):
    """The HF backend's rollout hands its log-probs to the groups; in fp32 on CPU they match the trainer's forward,
    so the TIS weights are 1 and the logged mismatch is ~0 (a rollout bug that shifted them would show here)."""
    trainer = make_trainer(synthetic_data, tmp_path / "run")
    samples = trainer._load(tuple(trainer.cfg.data.train))[:2]
    groups, _ = rollout_groups(trainer.cfg, trainer.schedule.stage_at(0), samples, trainer.run.processor,
                               trainer.backend, trainer._composite(trainer.schedule.stage_at(0).rewards),
                               trainer.generator, trainer.cfg.data)
    for group in groups:
        assert group.sampler_logp is not None and group.sampler_logp.shape == group.completion_ids.shape
        weight, metrics = truncated_is_weights(trainer_logp(trainer, group), group.sampler_logp,
                                               group.completion_mask, 2.0)
        active = group.completion_mask.bool()
        assert torch.allclose(weight[active], torch.ones_like(weight[active]), atol=1e-4)
        assert metrics["logprob_abs_diff_max"] < 1e-4 and 0 <= metrics["logprob_kl"] < 1e-7


def _update(trainer: GRPOLoop, groups) -> dict[str, float]:
    stage = trainer.schedule.stage_at(0)
    return policy_update(trainer.run, training_batch(trainer.run, groups, stage, trainer.reference), stage)


def test_weights_exactly_one_leave_the_update_unchanged(synthetic_data, tmp_path):
    """Sampler log-probs equal to the trainer's: every weight is exactly 1.0 and the step moves the weights exactly as
    without sampler log-probs; the mismatch is logged as exactly 0."""
    plain = make_trainer(synthetic_data, tmp_path / "a")
    tis = make_trainer(synthetic_data, tmp_path / "b")
    groups = global_batch(plain, 0, 2)
    with_sampler = [dataclasses.replace(g, sampler_logp=trainer_logp(tis, g)) for g in copy.deepcopy(groups)]
    for group in with_sampler:
        weight, _ = truncated_is_weights(group.sampler_logp, group.sampler_logp, group.completion_mask, 2.0)
        assert torch.equal(weight, torch.ones_like(weight))
    out_plain = _update(plain, groups)
    out_tis = _update(tis, with_sampler)
    assert "rollout/logprob_kl" not in out_plain
    assert out_tis["rollout/logprob_kl"] == 0.0 and out_tis["rollout/tis_weight_mean"] == 1.0
    assert out_tis["loss"] == out_plain["loss"]
    a, b = weights(plain.run.model), weights(tis.run.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_mismatch_scales_the_policy_gradient_by_the_weight(synthetic_data, tmp_path):
    """The sampler gave every token 1.5x less probability than the trainer: weight exp(log 1.5) = 1.5 < cap, so the
    (SGD, unclipped) step is 1.5x the uncorrected one; with tis_cap=null the mismatch is logged but not corrected."""
    base = make_trainer(synthetic_data, tmp_path / "base")
    start = weights(base.run.model)
    groups = global_batch(base, 0, 2)
    shifted = [dataclasses.replace(g, sampler_logp=trainer_logp(base, g) - math.log(1.5)) for g in copy.deepcopy(groups)]
    out_base = _update(base, groups)
    corrected = make_trainer(synthetic_data, tmp_path / "tis")
    out = _update(corrected, copy.deepcopy(shifted))
    off = make_trainer(synthetic_data, tmp_path / "off", "algorithm.tis_cap=null")
    out_off = _update(off, copy.deepcopy(shifted))

    assert out["rollout/tis_weight_mean"] == pytest.approx(1.5, rel=1e-5)
    assert out["rollout/tis_clip_frac"] == 0.0
    assert out["rollout/logprob_kl"] == pytest.approx(0.5 - math.log(1.5), rel=1e-4)  # k3 = r - 1 - log r
    assert out["rollout/logprob_abs_diff_max"] == pytest.approx(math.log(1.5), rel=1e-5)
    assert out["loss"] == pytest.approx(1.5 * out_base["loss"], rel=1e-4)
    moved_base = {k: v - start[k] for k, v in weights(base.run.model).items()}
    moved = {k: v - start[k] for k, v in weights(corrected.run.model).items()}
    num = sum(float((moved[k] - 1.5 * moved_base[k]).norm() ** 2) for k in moved) ** 0.5
    den = sum(float(moved_base[k].norm() ** 2) for k in moved) ** 0.5
    assert den > 0 and num / den < 1e-3
    # Off: the same step as the uncorrected one, the mismatch still logged.
    assert out_off["loss"] == out_base["loss"] and out_off["rollout/tis_weight_mean"] == pytest.approx(1.5, rel=1e-5)
    assert all(torch.equal(v, weights(base.run.model)[k]) for k, v in weights(off.run.model).items())


def test_weights_above_the_cap_are_truncated_in_the_real_loss():
    """A hand-computed case: trainer/sampler probability ratios 1, 1.5, 5 (capped at 2) and an inactive token whose
    garbage log-probs must not matter; the real ppo loss per token is the uncorrected one times min(ratio, cap)."""
    old = torch.log(torch.tensor([[0.5, 0.3, 0.5, 0.2]]))
    sampler = torch.log(torch.tensor([[0.5, 0.2, 0.1, 1e-30]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    weight, metrics = truncated_is_weights(old, sampler, mask, cap=2.0)
    assert torch.allclose(weight, torch.tensor([[1.0, 1.5, 2.0, 1.0]]))
    assert metrics["tis_clip_frac"] == pytest.approx(1 / 3)
    assert metrics["tis_weight_mean"] == pytest.approx(4.5 / 3)
    logp = old.clone().requires_grad_(True)
    adv = torch.tensor([0.7])
    plain, _ = policy_loss(logp, None, adv, mask)
    corrected, _ = policy_loss(logp, None, adv, mask, is_weight=weight)
    assert torch.allclose(plain, torch.tensor([[-0.7, -0.7, -0.7, 0.0]]))
    assert torch.allclose(corrected, torch.tensor([[-0.7, -1.05, -1.4, 0.0]]))
    corrected.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.7, -1.05, -1.4, 0.0]]))  # the weight carries no gradient


@pytest.mark.parametrize("loss_name", ["ppo", "gspo"])
def test_tis_weights_the_policy_gradient_term_only_never_the_kl(loss_name):
    """TRL and verl multiply the policy-gradient loss by the TIS weight and add the KL penalty after: the KL to the
    reference is not a quantity sampled under the rollout policy. For both registered losses, with beta > 0, the
    corrected loss minus the uncorrected one is (weight - 1) x the policy-gradient term alone."""
    from mmrl.rl.losses import POLICY_LOSSES

    loss_fn = POLICY_LOSSES.get(loss_name)
    gen = torch.Generator().manual_seed(3)
    logp = -torch.rand(2, 4, generator=gen) - 0.1
    ref = logp - 0.3 * torch.rand(2, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv = torch.tensor([0.8, -0.4])
    weight, _ = truncated_is_weights(logp, logp - torch.tensor([[0.2, -0.5, 1.0, 9.0], [0.0, 0.3, -0.1, 0.4]]),
                                     mask, 2.0)
    kwargs = dict(ref_logp=ref, beta=0.1, kl_estimator="k3")
    pg_only, _ = loss_fn(logp, None, adv, mask)
    plain, _ = loss_fn(logp, None, adv, mask, **kwargs)
    corrected, _ = loss_fn(logp, None, adv, mask, is_weight=weight, **kwargs)
    assert not torch.equal(weight, torch.ones_like(weight))
    assert torch.allclose(corrected - plain, (weight - 1) * pg_only, atol=1e-6)


def test_hf_sampler_logprobs_ignore_top_k_top_p_truncation(synthetic_data, tmp_path):
    """With top-k/top-p the HF sampler draws from a truncated distribution but hands over the full-vocabulary
    log-probs (after temperature), as the trainer computes them: the TIS weights stay 1 instead of carrying the kept
    probability mass (which would scale every token's gradient down)."""
    trainer = make_trainer(synthetic_data, tmp_path / "run", "rollout.top_k=3", "rollout.top_p=0.8",
                           "rollout.temperature=0.7")
    stage = trainer.schedule.stage_at(0)
    samples = trainer._load(tuple(trainer.cfg.data.train))[:2]
    groups, _ = rollout_groups(trainer.cfg, stage, samples, trainer.run.processor, trainer.backend,
                               trainer._composite(stage.rewards), trainer.generator, trainer.cfg.data)
    for group in groups:
        weight, metrics = truncated_is_weights(trainer_logp(trainer, group), group.sampler_logp,
                                               group.completion_mask, 2.0)
        active = group.completion_mask.bool()
        assert torch.allclose(weight[active], torch.ones_like(weight[active]), atol=1e-4)
        assert metrics["logprob_abs_diff_max"] < 1e-4
