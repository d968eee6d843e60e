"""The training forward's token entropies (`recording_entropy`): the entropy of the tempered next-token distribution
at every active completion token, equal to torch's own `Categorical(...).entropy()` of the LM head's logits, whole or
in checkpointed chunks, with its gradient; the log-probs are the same with the recording on."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.models.logprobs import completion_logprobs, naive_completion_logprobs, recording_entropy
from mmrl.rl.entropy import per_token_entropy
from tests.integration.chat_prompts import image_prompt
from tests.integration.test_shared_prefix import completions


def logits_seen_by_the_head(model, fn, *args, **kwargs):
    """(log-probs, the LM head's outputs in call order) of one forward, recorded by a hook on the head."""
    seen: list[torch.Tensor] = []
    handle = model.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))
    try:
        logp = fn(*args, **kwargs)
    finally:
        handle.remove()
    return logp, torch.cat(seen)


@pytest.mark.parametrize(("fn", "chunk_size"), [(completion_logprobs, 1024), (completion_logprobs, 5),
                                                (naive_completion_logprobs, 1024)])
def test_recorded_entropy_is_the_heads_distribution_entropy(policy, fn, chunk_size):
    model, processor = policy
    prompt = image_prompt(processor, 56, "what color is the shape?", seed=4)
    ids, mask = completions(processor.tokenizer.pad_token_id, g=3, t=12)
    temperature = 0.7
    plain = fn(model, prompt, ids, mask, temperature=temperature, chunk_size=chunk_size).detach()
    model.zero_grad(set_to_none=True)
    tap: list[torch.Tensor] = []
    with recording_entropy(tap):
        logp, logits = logits_seen_by_the_head(model, fn, model, prompt, ids, mask, temperature=temperature,
                                               chunk_size=chunk_size)
    entropy = per_token_entropy(tap, mask)
    expected = torch.distributions.Categorical(logits=logits.float() / temperature).entropy()
    assert torch.allclose(entropy[mask.bool()], expected, atol=1e-5)
    assert torch.equal(logp.detach(), plain) and (entropy[~mask.bool()] == 0).all()
    entropy.sum().backward()  # the bonus needs the gradient of the entropy itself
    grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_adaptive_coefficient_steps_and_resumes_with_the_trainer(tmp_path):
    """One real update with the adaptive control: the step applies c_k (its entropy is below the target), the
    trainer's control moves to c_k + delta, and the trainer's checkpoint state carries it to a resumed trainer."""
    import copy
    import sys
    from pathlib import Path

    from data_pipelines.synthetic import build_synthetic
    from mmrl.config import load_config
    from mmrl.rl.trainer import GRPOLoop
    from mmrl.rl.training_batch import training_batch
    from mmrl.rl.update import policy_update

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tests" / "fixtures" / "trainer"))
    from fixed_groups import fixed_group

    data = build_synthetic(["color"], 4, 0, tmp_path / "data", image_size=56)
    overrides = [f"data.train={data}", "trainer.report_to=[jsonl]", "trainer.progress=false", "model.dtype=fp32",
                 "trainer.device=cpu", "algorithm.entropy_control=adaptive", "algorithm.entropy_coef=0.01",
                 "algorithm.entropy_target=100", "algorithm.entropy_coef_delta=0.005"]
    config = root / "configs" / "tests" / "grpo_tiny.yaml"
    trainer = GRPOLoop(load_config(config, [*overrides, f"trainer.output_dir={tmp_path / 'a'}"]))
    groups = [fixed_group(trainer, 0, i) for i in range(2)]
    stage = trainer.schedule.stage_at(0)
    batch = training_batch(trainer.run, copy.deepcopy(groups), stage, trainer.reference, trainer.entropy)
    metrics = policy_update(trainer.run, batch, stage)
    assert metrics["entropy/coef"] == pytest.approx(0.01) and 0 < metrics["entropy/rollout_mean"] < 100
    assert metrics["loss/entropy"] > 0 and trainer.entropy.coef == pytest.approx(0.015)
    state = trainer.state()
    trainer.run.close()
    resumed = GRPOLoop(load_config(config, [*overrides, f"trainer.output_dir={tmp_path / 'b'}"]))
    resumed._restore(state)
    assert resumed.entropy.coef == pytest.approx(0.015)
    resumed.run.close()


@pytest.mark.parametrize(("overrides", "measured", "trained"), [
    # a fixed bonus reads no entropy before the update (no extra forward) and trains every group (the bonus acts on
    # the zero-advantage group's tokens too)
    (["algorithm.entropy_coef=0.01"], 0, 2),
    # a token selection alone measures every group first, but the zero-advantage group's loss is exactly 0: skipped
    (["algorithm.top_entropy_quantile=0.5"], 2, 1),
])
def test_the_entropy_controls_run_only_the_forwards_they_need(tmp_path, monkeypatch, overrides, measured, trained):
    import copy
    import sys
    from pathlib import Path

    import mmrl.rl.step_logprobs as step_logprobs
    from data_pipelines.synthetic import build_synthetic
    from mmrl.config import load_config
    from mmrl.rl.trainer import GRPOLoop
    from mmrl.rl.training_batch import training_batch
    from mmrl.rl.update import policy_update

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tests" / "fixtures" / "trainer"))
    from fixed_groups import fixed_group

    data = build_synthetic(["color"], 4, 0, tmp_path / "data", image_size=56)
    config = root / "configs" / "tests" / "grpo_tiny.yaml"
    trainer = GRPOLoop(load_config(config, [f"data.train={data}", "trainer.report_to=[jsonl]",
                                               "trainer.progress=false", "model.dtype=fp32", "trainer.device=cpu",
                                               f"trainer.output_dir={tmp_path}", *overrides]))
    calls = []
    measure = step_logprobs._logprobs_and_entropy
    monkeypatch.setattr(step_logprobs, "_logprobs_and_entropy", lambda *a, **k: calls.append(1) or measure(*a, **k))
    groups = [fixed_group(trainer, 0, 0), fixed_group(trainer, 0, 1, flat=True)]
    stage = trainer.schedule.stage_at(0)
    batch = training_batch(trainer.run, copy.deepcopy(groups), stage, trainer.reference, trainer.entropy)
    metrics = policy_update(trainer.run, batch, stage)
    trainer.run.close()
    assert (len(calls), metrics["update/micro_batches"]) == (measured, trained)
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
