"""Precision is said once (`model.dtype`): bf16 = fp32 weights + bf16 autocast for training, bf16 weights for
inference; log-probs stay fp32. The type ids cover completion tokens in the training forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.models.loading import load_policy
from mmrl.models.logprobs import completion_logprobs, naive_completion_logprobs
from mmrl.models.placement import compute_dtype
from mmrl.parallel.distributed import collective_device

ROOT = Path(__file__).resolve().parents[2]


def _prompt(processor):
    pixels = (np.random.RandomState(0).rand(56, 56, 3) * 255).astype("uint8")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt"))


def test_bf16_trains_fp32_weights_under_autocast_and_infers_in_bf16_weights():
    fp32 = load_policy(load_config(None, ["model.dtype=fp32"]).model)
    mixed = load_policy(load_config(None, ["model.dtype=bf16"]).model)
    inference = load_policy(load_config(None, ["model.dtype=bf16"]).model, for_training=False)
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32}
    assert compute_dtype(mixed.model) == torch.bfloat16 and compute_dtype(fp32.model) == torch.float32
    assert {p.dtype for p in inference.model.parameters()} == {torch.bfloat16}

    prompt = _prompt(fp32.processor)
    ids = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    exact = completion_logprobs(fp32.model, prompt, ids, mask)
    under_autocast = completion_logprobs(mixed.model, prompt, ids, mask)
    naive_autocast = naive_completion_logprobs(mixed.model, prompt, ids, mask)
    assert exact.dtype == under_autocast.dtype == naive_autocast.dtype == torch.float32
    gap = (under_autocast - exact).abs().max()
    assert 0 < gap < 0.1  # bf16 compute really ran, and stayed close to fp32
    under_autocast.sum().backward()
    grads = [p.grad for p in mixed.model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)  # the optimizer steps fp32 master weights


def test_trainer_bf16_is_gone_and_says_where_precision_lives():
    with pytest.raises(UserError, match="model.dtype"):
        load_config(None, ["trainer.bf16=true"])
    with pytest.raises(UserError):
        load_config(None, ["model.dtype=fp16"])  # needs loss scaling; not offered


def test_training_forward_gives_completion_tokens_type_ids(tiny_model_dir):
    """The naive forward sees mm_token_type_ids over prompt + completion, zeros on the completion."""
    loaded = load_policy(load_config(None).model)
    prompt = _prompt(loaded.processor)
    seen = {}

    def capture(_module, _args, kwargs):
        seen.update({k: v for k, v in kwargs.items() if k in ("input_ids", "mm_token_type_ids")})

    handle = loaded.model.model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        ids = torch.randint(0, 500, (3, 4), generator=torch.Generator().manual_seed(1))
        naive_completion_logprobs(loaded.model, prompt, ids, torch.ones_like(ids))
    finally:
        handle.remove()
    length = prompt["input_ids"].shape[1]
    assert seen["mm_token_type_ids"].shape == seen["input_ids"].shape == (3, length + 4)
    assert (seen["mm_token_type_ids"][:, length:] == 0).all() and (seen["mm_token_type_ids"][:, :length] > 0).any()


def test_collectives_without_a_process_group_use_the_cpu():
    assert collective_device() == torch.device("cpu")


def test_grpo_step_in_bf16_on_cpu(tmp_path):
    """The whole step (rollout, log-probs, loss, update) runs under bf16 autocast; weights stay fp32 and move."""
    from data_pipelines.synthetic import build_synthetic
    from mmrl.rl.trainer import GRPOLoop
    from mmrl.runs.logger import read_metrics

    data = build_synthetic(["color"], 4, 0, tmp_path / "data", image_size=56)
    over = {"model.dtype": "bf16", "data.train": str(data), "trainer.output_dir": str(tmp_path / "run"),
            "trainer.report_to": "[jsonl]", "trainer.progress": "false", "trainer.save_final": "false",
            "trainer.sample_steps": 0, "trainer.max_steps": 1, "rollout.max_completion_length": 4,
            "rewards": f"[{{name: '{ROOT / 'tests/fixtures/trainer/varied_reward.py'}:reward'}}]", "optimizer.lr": 1e-3}
    trainer = GRPOLoop(load_config(ROOT / "configs/tests/grpo_tiny.yaml", [f"{k}={v}" for k, v in over.items()]))
    assert trainer.generator.device == trainer.run.dist.device  # sampling draws on the model's device
    before = {k: v.detach().clone() for k, v in trainer.run.model.named_parameters()}
    trainer.train()
    after = dict(trainer.run.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    (row,) = read_metrics(tmp_path / "run")
    assert np.isfinite(row["loss"]) and row["grad_norm"] > 0


def test_lora_in_bf16_holds_the_frozen_base_in_bf16_and_trains_fp32_adapters():
    loaded = load_policy(load_config(None, ["model.dtype=bf16", "model.lora.enabled=true"]).model)
    trainable = {p.dtype for p in loaded.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in loaded.model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    ids = torch.randint(0, 500, (2, 4), generator=torch.Generator().manual_seed(0))
    logp = completion_logprobs(loaded.model, _prompt(loaded.processor), ids, torch.ones_like(ids))
    assert logp.dtype == torch.float32
    logp.sum().backward()
    grads = [p.grad for p in loaded.model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(bool(g.abs().max() > 0) for g in grads)


def test_the_frozen_reference_copy_holds_its_matmuls_in_the_compute_dtype_and_equals_the_policy_at_step_0():
    """The copy's matmul weights are bf16 (what autocast casts the policy's to), the rest as the policy: at step 0 its
    log-probs are the policy's exactly on both forwards, so the KL starts at 0, not at a bf16-noise floor."""
    from mmrl.rl.reference import make_reference, reference_logprobs

    mixed = load_policy(load_config(None, ["model.dtype=bf16"]).model)
    reference = make_reference(mixed.model, beta=0.04)
    head = reference.model.get_output_embeddings()
    linears = [m for m in reference.model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert head.weight.dtype == torch.float32
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32}  # the policy itself is untouched
    prompt = _prompt(mixed.processor)
    ids = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    for forward in (completion_logprobs, naive_completion_logprobs):
        ref = reference_logprobs(reference.model, prompt, ids, mask, logprob_fn=forward)
        with torch.no_grad():
            policy = forward(mixed.model, prompt, ids, mask)
        assert ref.dtype == torch.float32 and torch.equal(ref, policy), (forward.__name__, (ref - policy).abs().max())
