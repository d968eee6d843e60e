"""The training forward's token entropies (`recording_entropy`): the entropy of the tempered next-token distribution
at every active completion token, equal to torch's own `Categorical(...).entropy()` of the LM head's logits, whole or
in checkpointed chunks, with its gradient; the log-probs are the same with the recording on."""

from __future__ import annotations

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
