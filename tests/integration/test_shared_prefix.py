"""Sharing the prompt across its group gives the same log-probs and gradients as the naive per-sample forward."""

import pytest
import torch

from mmrl.generation.hf import count_vision, vision_module
from mmrl.models.loading import enable_activation_checkpointing
from mmrl.models.logprobs import completion_logprobs, naive_completion_logprobs, selective_log_softmax
from mmrl.rl.reference import make_reference, reference_logprobs
from tests.integration.chat_prompts import image_prompt


def completions(pad_id, g=4, t=9, seed=0):
    ids = torch.randint(0, 1000, (g, t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(g, t, dtype=torch.long)
    mask[1, 4:] = 0  # a short completion
    mask[2, 1:] = 0  # a one-token completion
    ids[mask == 0] = pad_id
    return ids, mask


def forward_backward(fn, model, prompt, ids, mask, **kwargs):
    model.zero_grad(set_to_none=True)
    lp = fn(model, prompt, ids, mask, **kwargs)
    (lp * torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)).sum().backward()  # non-uniform weights per token
    vision = model.model.visual.patch_embed.proj.weight.grad.clone()
    lm = model.model.language_model.layers[0].self_attn.q_proj.weight.grad.clone()
    return lp.detach(), vision, lm


@pytest.mark.parametrize("size,temperature", [(56, 1.0), (84, 0.7)])
def test_shared_prefix_matches_naive(policy, size, temperature):
    model, processor = policy
    other = image_prompt(processor, 112, "how many objects?", seed=9)
    prompt = image_prompt(processor, size, "what color is the shape?", seed=size)
    ids, mask = completions(processor.tokenizer.pad_token_id)
    naive_completion_logprobs(model, other, ids, mask)  # leaves a different prompt's state on the model
    shared = forward_backward(completion_logprobs, model, prompt, ids, mask, temperature=temperature)
    naive = forward_backward(naive_completion_logprobs, model, prompt, ids, mask, temperature=temperature)
    assert (shared[0] - naive[0]).abs().max() < 1e-5
    assert (shared[0][mask == 0] == 0).all() and (shared[0][mask == 1] < 0).all()
    for a, b in zip(shared[1:], naive[1:], strict=True):
        assert b.abs().max() > 0  # the gradient does reach the vision tower and the LM
        assert (a - b).norm() / b.norm() < 1e-4


def test_chunked_lm_head_same_values_and_grads(policy):
    model, processor = policy
    prompt = image_prompt(processor, 56, "count", seed=3)
    ids, mask = completions(processor.tokenizer.pad_token_id, g=3, t=12)
    whole = forward_backward(completion_logprobs, model, prompt, ids, mask)
    chunked = forward_backward(completion_logprobs, model, prompt, ids, mask, chunk_size=5)  # checkpointed chunks
    for a, b in zip(whole, chunked, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_vision_encoded_once_per_group(policy):
    model, processor = policy
    prompt = image_prompt(processor, 56, "what color?", seed=1)
    ids, mask = completions(processor.tokenizer.pad_token_id, g=6)
    shared, naive = {}, {}
    with torch.no_grad(), count_vision(vision_module(model), shared):
        completion_logprobs(model, prompt, ids, mask)
    with torch.no_grad(), count_vision(vision_module(model), naive):
        naive_completion_logprobs(model, prompt, ids, mask)
    assert shared["images_encoded"] == 1 and naive["images_encoded"] == 6


def test_selective_log_softmax_matches_log_softmax():
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0))
    index = torch.randint(0, 50, (3, 7))
    expected = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    for chunk in (1, 4, 100):
        assert torch.allclose(selective_log_softmax(logits, index, chunk_size=chunk), expected, atol=1e-6)


def test_reference_frozen_copy_and_beta_zero(policy):
    model, processor = policy
    assert make_reference(model, beta=0.0) is None
    prompt = image_prompt(processor, 56, "what color?", seed=2)
    ids, mask = completions(processor.tokenizer.pad_token_id)
    ref = make_reference(model, beta=0.04)
    assert not ref.shares_weights and not any(p.requires_grad for p in ref.model.parameters())
    before = ref(prompt, ids, mask)
    assert torch.allclose(before, completion_logprobs(model, prompt, ids, mask).detach(), atol=1e-6)
    weight = model.lm_head.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))  # the policy moves
        after = ref(prompt, ids, mask)
        moved = completion_logprobs(model, prompt, ids, mask)
        weight.copy_(saved)
    assert torch.equal(before, after) and (moved - after).abs().max() > 1e-3


def test_lora_reference_disables_adapter(policy):
    import copy

    from peft import LoraConfig, get_peft_model

    base, processor = policy
    base = copy.deepcopy(base)
    prompt = image_prompt(processor, 56, "what color?", seed=4)
    ids, mask = completions(processor.tokenizer.pad_token_id)
    with torch.no_grad():
        plain = completion_logprobs(base, prompt, ids, mask)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    ref = make_reference(peft_model, beta=0.1)
    assert ref.shares_weights
    adapted = completion_logprobs(peft_model, prompt, ids, mask)
    assert adapted.requires_grad and (adapted.detach() - plain).abs().max() > 1e-4
    assert torch.allclose(ref(prompt, ids, mask), plain, atol=1e-6)
    assert torch.allclose(reference_logprobs(peft_model, prompt, ids, mask), plain, atol=1e-6)
    # adapter active again after the reference call
    assert torch.allclose(completion_logprobs(peft_model, prompt, ids, mask).detach(), adapted.detach(), atol=1e-6)


def test_gradient_checkpointing_keeps_the_prefix(policy):
    """Checkpointed decoder layers (which drop a plain KV cache in training mode) keep the shared prompt, stay
    checkpointed (each text layer is replayed in backward), and match the naive forward in values and gradients."""
    import copy
    import warnings

    model, processor = policy
    model = copy.deepcopy(model)
    prompt = image_prompt(processor, 56, "what color?", seed=5)
    ids, mask = completions(processor.tokenizer.pad_token_id)
    expected = forward_backward(naive_completion_logprobs, model, prompt, ids, mask)
    plain_shared = forward_backward(completion_logprobs, model, prompt, ids, mask)
    enable_activation_checkpointing(model)
    model.train()
    layers = model.model.language_model.layers
    calls = []  # self-attention runs of each text layer: a checkpointed layer runs again in backward
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "checkpointing not applied" warning any more
        shared = forward_backward(completion_logprobs, model, prompt, ids, mask)
    for hook in hooks:
        hook.remove()
    # prompt pass + completion pass, each once in forward and once replayed in backward
    assert [calls.count(i) for i in range(len(layers))] == [4] * len(layers)
    assert all(layer.gradient_checkpointing for layer in layers)
    assert all("_can_checkpoint_with_cache" not in layer.__dict__ for layer in layers)  # restored
    for got in (shared, plain_shared):
        assert (got[0] - expected[0]).abs().max() < 1e-5
        for a, b in zip(got[1:], expected[1:], strict=True):
            assert (a - b).norm() / b.norm() < 1e-4


def test_lora_gradients_with_checkpointing_match_the_naive_forward(policy):
    """LoRA adapters in checkpointed decoder layers (k/v adapters reach the completions through the prompt's cached
    keys, replayed in backward) get the naive forward's gradients."""
    import copy

    from peft import LoraConfig, get_peft_model

    base, processor = policy
    base = copy.deepcopy(base)
    enable_activation_checkpointing(base)  # before the adapters, as load_policy does
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                                            init_lora_weights=False))
    model.train()
    prompt = image_prompt(processor, 56, "what shape?", seed=6)
    ids, mask = completions(processor.tokenizer.pad_token_id)

    def run(fn):
        model.zero_grad(set_to_none=True)
        lp = fn(model, prompt, ids, mask)
        (lp * torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    shared, naive = run(completion_logprobs), run(naive_completion_logprobs)
    assert (shared[0] - naive[0]).abs().max() < 1e-5
    assert shared[1].keys() == naive[1].keys() and any("k_proj.lora" in n for n in naive[1])
    for name, want in naive[1].items():
        assert want.abs().max() > 0, name
        assert (shared[1][name] - want).norm() / want.norm() < 1e-4, name


def test_text_only_prompt(policy):
    model, processor = policy
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is 2 + 3?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = dict(processor(text=[text], return_tensors="pt"))
    ids, mask = completions(processor.tokenizer.pad_token_id)
    with torch.no_grad():
        shared = completion_logprobs(model, prompt, ids, mask)
        naive = naive_completion_logprobs(model, prompt, ids, mask)
    assert (shared - naive).abs().max() < 1e-5
