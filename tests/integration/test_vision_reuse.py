"""A frozen vision tower runs once per image per step: the rollout's prefill records the prompt's image features and
the step's later forwards (old log-probs, reference, training) reuse them, exactly; a trainable tower is never reused."""

import copy

import pytest
import torch

from mmrl.config import load_config
from mmrl.generation import SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.models.dropout import disable_dropout
from mmrl.models.loading import load_policy
from mmrl.models.logprobs import completion_logprobs
from mmrl.models.training_forward import (
    capture_image_features,
    match_image_features,
    reuse_image_features,
    vision_frozen,
)
from mmrl.models.vision_tower import count_vision, vision_module
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics
from tests.integration.chat_prompts import image_prompt, text_prompt
from tests.integration.test_grpo_trainer import CONFIG, overrides, synthetic_data  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def frozen():
    cfg = load_config(None).model.model_copy(update={"freeze_vision_tower": True})
    loaded = load_policy(cfg)
    model = loaded.model.float()
    disable_dropout(model)
    return model, loaded.processor


@pytest.fixture(scope="module")
def rolled(frozen):
    """Three prompts (two images of different sizes, one text-only) rolled out once with the features recorded."""
    model, processor = frozen
    prompts = [image_prompt(processor, 112, "how many shapes?", 0), text_prompt(processor, "2 + 3?"),
               image_prompt(processor, 56, "what colour?", 1)]
    recorded = []
    with capture_image_features(model, recorded):
        batch = make_backend(model, processor).rollout(prompts, SamplingParams(n=3, max_new_tokens=5, seed=0))
    assert batch.counters["vision_encoder_calls"] == 2  # one per image prompt
    return prompts, batch, recorded


def forward_and_grads(model, prompt, ids, mask, features=None):
    counters = {}
    model.zero_grad(set_to_none=True)
    with count_vision(vision_module(model), counters), reuse_image_features(model, features, counters):
        logp = completion_logprobs(model, prompt, ids, mask)
    (logp * mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), grads, counters


def test_reused_features_give_the_same_logprobs_and_gradients(frozen, rolled):
    model, _ = frozen
    prompts, batch, recorded = rolled
    assert vision_frozen(model)
    assert match_image_features(prompts[1], recorded) is None  # no image: nothing to reuse
    for index in (0, 2):
        features = match_image_features(prompts[index], recorded)
        assert features is not None
        rows = slice(index * 3, index * 3 + 3)
        ids, mask = batch.completion_ids[rows], batch.completion_mask[rows]
        plain, plain_grads, plain_counts = forward_and_grads(model, prompts[index], ids, mask)
        reused, reused_grads, reused_counts = forward_and_grads(model, prompts[index], ids, mask, features)
        assert plain_counts["vision_encoder_calls"] == 1 and "vision_reused" not in plain_counts
        assert reused_counts["vision_encoder_calls"] == 0 and reused_counts["vision_reused"] == 1
        torch.testing.assert_close(reused, plain, atol=1e-6, rtol=0)
        assert plain_grads.keys() == reused_grads.keys() and plain_grads
        assert not any("visual" in name for name in plain_grads)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(reused_grads[name], grad, atol=1e-6, rtol=0, msg=name)


def test_other_images_and_trainable_towers_are_encoded_again(frozen, rolled):
    model, _ = frozen
    prompts, batch, recorded = rolled
    other = match_image_features(prompts[2], recorded)
    ids, mask = batch.completion_ids[:3], batch.completion_mask[:3]
    # Features of another image: the tower runs for this one (a wrong reuse would fail the placeholder count).
    _, _, counts = forward_and_grads(model, prompts[0], ids, mask, other)
    assert counts["vision_encoder_calls"] == 1 and "vision_reused" not in counts
    # A trainable tower: its output carries the gradient, so the recorded features are never served.
    trainable = copy.deepcopy(model)
    vision_module(trainable).requires_grad_(True)
    assert not vision_frozen(trainable)
    mine = match_image_features(prompts[0], recorded)
    _, grads, counts = forward_and_grads(trainable, prompts[0], ids, mask, mine)
    assert counts["vision_encoder_calls"] == 1 and "vision_reused" not in counts
    assert any("visual" in name for name in grads)
    late = []
    with capture_image_features(trainable, late):
        make_backend(trainable, frozen[1]).rollout(prompts[:1], SamplingParams(n=2, max_new_tokens=2, seed=0))
    assert late == []  # nothing recorded for a trainable tower


@pytest.mark.parametrize("freeze", [True, False])
def test_a_training_step_encodes_each_image_once_when_frozen(synthetic_data, tmp_path, freeze):  # noqa: F811
    # beta > 0 (a reference copy, fp32) and mu = 2 (old log-probs): three forwards per group after the rollout.
    cfg = load_config(CONFIG, overrides(synthetic_data, tmp_path, **{
        "trainer.max_steps": 1, "model.freeze_vision_tower": str(freeze).lower(), "algorithm.beta": 0.04,
        "algorithm.num_iterations": 2}))
    trainer = GRPOLoop(cfg)
    reference_passes = {}
    with count_vision(vision_module(trainer.reference.model), reference_passes):
        trainer.train()
    (row,) = read_metrics(tmp_path)
    assert row["rollout/vision_encoder_calls"] == 2  # 2 prompts, one image each
    if freeze:
        assert row["update/vision_encoder_calls"] == 0 and reference_passes["vision_encoder_calls"] == 0
        assert row["update/vision_reused"] >= 2 * 2  # per group: old log-probs + training forward(s)
    else:
        assert row["update/vision_reused"] == 0 and row["update/vision_encoder_calls"] >= 2 * 2
        assert reference_passes["vision_encoder_calls"] == 2


@pytest.mark.parametrize("include_vision", [False, True])
def test_lora_reference_reuses_only_an_adapter_free_tower(rolled, include_vision):
    # LoRA: the reference is the policy with its adapters off. Without adapters in the tower it computes the policy's
    # features (reused); with them the tower is trainable and nothing is reused, by the policy or the reference.
    from mmrl.rl.reference import ReferencePolicy

    prompts, batch, _ = rolled
    base = load_config(None).model
    # Explicit targets: `qkv` is the tower's attention projection (the text layers have q/k/v_proj).
    targets = ["q_proj", "v_proj"] + (["qkv"] if include_vision else [])
    cfg = base.model_copy(update={"lora": base.lora.model_copy(update={"enabled": True, "target_modules": targets})})
    model = load_policy(cfg).model.float()
    disable_dropout(model)
    assert vision_frozen(model) is not include_vision
    recorded = []
    with capture_image_features(model, recorded):
        make_backend(model, load_policy(cfg).processor).rollout(prompts[:1], SamplingParams(n=2, max_new_tokens=2))
    assert len(recorded) == (0 if include_vision else 1)
    features = match_image_features(prompts[0], recorded)
    reference = ReferencePolicy(model)
    ids, mask = batch.completion_ids[:3], batch.completion_mask[:3]
    counts = {}
    with count_vision(vision_module(model), counts):
        plain = reference(prompts[0], ids, mask)
        reused = reference(prompts[0], ids, mask, image_features=features)
    assert counts["vision_encoder_calls"] == (2 if include_vision else 1)
    torch.testing.assert_close(reused, plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset", ["tiny-qwen3-vl", "tiny-gemma3"])
def test_other_architectures(preset):
    # Qwen3-VL's image features carry DeepStack features too: reused whole, exactly. Gemma3 runs the naive path (the
    # image encoded G times, batched): nothing is recorded, and a frozen tower trains as before.
    cfg = load_config(None, [f"model.name_or_path={preset}", "model.freeze_vision_tower=true"]).model
    loaded = load_policy(cfg)
    model, processor = loaded.model.float(), loaded.processor
    disable_dropout(model)
    prompt = image_prompt(processor, 64, "what colour?", 2)
    recorded = []
    with capture_image_features(model, recorded):
        batch = make_backend(model, processor).rollout([prompt], SamplingParams(n=2, max_new_tokens=4, seed=0))
    features = match_image_features(prompt, recorded)
    assert (features is not None) is (preset == "tiny-qwen3-vl")
    plain, plain_grads, _ = forward_and_grads(model, prompt, batch.completion_ids, batch.completion_mask)
    reused, reused_grads, counts = forward_and_grads(model, prompt, batch.completion_ids, batch.completion_mask,
                                                     features)
    assert counts.get("vision_reused", 0) == (1 if features is not None else 0)
    torch.testing.assert_close(reused, plain, atol=1e-6, rtol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(reused_grads[name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("resumed_tower", [False, True])
def test_copied_reference_reuses_only_the_same_tower(frozen, rolled, resumed_tower):
    # A full-model reference is a copy taken before any resume: if the policy's (frozen) tower was then loaded with
    # other weights, the copy's tower computes other features and must encode the image itself.
    from mmrl.rl.reference import ReferencePolicy

    model = copy.deepcopy(frozen[0])
    prompts, batch, recorded = rolled
    reference = ReferencePolicy(model)
    if resumed_tower:
        with torch.no_grad():
            next(vision_module(model).parameters()).add_(0.5)
    ids, mask = batch.completion_ids[:3], batch.completion_mask[:3]
    counts = {}
    with count_vision(vision_module(reference.model), counts):
        plain = reference(prompts[0], ids, mask)
        reused = reference(prompts[0], ids, mask, image_features=match_image_features(prompts[0], recorded))
    assert counts["vision_encoder_calls"] == (2 if resumed_tower else 1)
    torch.testing.assert_close(reused, plain, atol=1e-6, rtol=0)
