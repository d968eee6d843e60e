"""Rollout backends on the tiny model: shared-prefix == naive generate, EOS, min_new_tokens, counters, texts."""

import copy

import pytest
import torch

from mmrl.errors import UserError
from mmrl.generation import SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.generation.hf import HFNaiveBackend, HFSharedPrefixBackend, _Row
from mmrl.models.logprobs import completion_logprobs
from tests.integration.chat_prompts import image_prompt


@pytest.fixture(scope="module")
def prompts(policy):
    _, processor = policy
    return [image_prompt(processor, 56, "what color is the shape?", 0), image_prompt(processor, 84, "how many?", 1)]


@pytest.fixture(scope="module")
def greedy_eos_model(policy, prompts):
    """A copy whose EOS row is 1.05 x the row of the token greedy decoding emits 4th for prompt 0, so greedy
    completions end in EOS at a known, prompt-dependent step (the random tiny model never emits EOS by itself)."""
    model, processor = policy
    first = HFSharedPrefixBackend(model, processor).rollout(prompts, SamplingParams(n=1, max_new_tokens=6, temperature=0.0))
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight[processor.tokenizer.eos_token_id] = model.lm_head.weight[first.completion_ids[0, 3]] * 1.05
    return model


@pytest.fixture(scope="module")
def eos_model(policy, prompts):
    """A copy whose EOS logit is pushed up along the mean final hidden state: sampled completions end at varied
    lengths."""
    model, processor = policy
    model = copy.deepcopy(model)
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        hidden = model.model(**prompts[0]).last_hidden_state[0]
        direction = hidden.mean(0)
        model.lm_head.weight[eos] = direction * (4.0 / direction.dot(direction))
    model.model.rope_deltas = None
    return model


def test_greedy_shared_equals_naive(policy, prompts):
    model, processor = policy
    shared = HFSharedPrefixBackend(model, processor).rollout(prompts, SamplingParams(n=3, max_new_tokens=12, temperature=0.0))
    naive = HFNaiveBackend(model, processor).rollout(prompts, SamplingParams(n=3, max_new_tokens=12, temperature=0.0))
    assert torch.equal(shared.completion_ids, naive.completion_ids)
    assert torch.equal(shared.completion_mask, naive.completion_mask)
    assert shared.texts == naive.texts
    assert shared.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    # The image is encoded once per prompt, not once per sample; prompt tokens go through the LM once.
    assert shared.counters["images_encoded"] == 2 and naive.counters["images_encoded"] == 6
    lengths = sum(p["input_ids"].shape[1] for p in prompts)
    assert shared.counters["prefill_tokens"] == lengths and naive.counters["prefill_tokens"] == 3 * lengths


def test_eos_stops_branches_and_min_new_tokens(greedy_eos_model, policy, prompts):
    _, processor = policy
    eos = processor.tokenizer.eos_token_id
    pad = processor.tokenizer.pad_token_id
    for min_new in (0, 6):
        shared = HFSharedPrefixBackend(greedy_eos_model, processor).rollout(
            prompts, SamplingParams(n=2, max_new_tokens=10, min_new_tokens=min_new, temperature=0.0))
        naive = HFNaiveBackend(greedy_eos_model, processor).rollout(
            prompts, SamplingParams(n=2, max_new_tokens=10, min_new_tokens=min_new, temperature=0.0))
        assert torch.equal(shared.completion_ids, naive.completion_ids)
        assert torch.equal(shared.completion_mask, naive.completion_mask)
        lengths = shared.completion_mask.sum(1)
        if min_new == 0:
            assert lengths[:2].tolist() == [4, 4]  # by construction: prompt 0's greedy 4th token is now EOS
        else:
            assert (lengths[:2] > 4).all()  # min_new_tokens forbade that early EOS
        assert (lengths >= min_new + 1)[~shared.truncated].all()
        for row, n, cut in zip(shared.completion_ids, lengths.tolist(), shared.truncated.tolist(), strict=True):
            assert (row[: n - 1] != eos).all()  # no EOS before the last active token
            if not cut:
                assert row[n - 1] == eos and (row[n:] == pad).all()
        assert all("<|im_end|>" not in t and "<|endoftext|>" not in t for t in shared.texts)


def test_sampling_logprobs_match_training_forward(eos_model, policy, prompts):
    """Branches that stop early are dropped from the cache; the survivors' log-probs must stay exact."""
    _, processor = policy
    backend = HFSharedPrefixBackend(eos_model, processor)
    params = SamplingParams(n=4, max_new_tokens=12, temperature=0.8, top_p=0.95, top_k=200)
    batch = backend.rollout(prompts, params, generator=torch.Generator().manual_seed(0))
    again = backend.rollout(prompts, params, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.completion_ids, again.completion_ids)  # reproducible from the generator
    lengths = batch.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 2  # branches really ended at different steps
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            rows = batch.prompt_index == p
            ids, mask = batch.completion_ids[rows], batch.completion_mask[rows]
            width = int(mask.sum(1).max())
            recomputed = completion_logprobs(eos_model, prompt, ids[:, :width], mask[:, :width], temperature=0.8)
            assert (recomputed - batch.logprobs[rows][:, :width]).abs().max() < 1e-5


def test_texts_keep_reasoning_tags(policy):
    model, processor = policy
    backend = HFSharedPrefixBackend(model, processor)
    tok = processor.tokenizer
    body = tok("<think> red </think><answer> red </answer>", add_special_tokens=False)["input_ids"]
    rows = [_Row(torch.tensor(body + [tok.eos_token_id]), None, True), _Row(torch.tensor(body[:3]), None, False)]
    batch = backend._batch(rows, SamplingParams(n=2), {}, torch.device("cpu"))
    assert batch.texts[0] == "<think> red </think><answer> red </answer>"
    assert batch.truncated.tolist() == [False, True]
    assert batch.completion_mask.sum(1).tolist() == [len(body) + 1, 3]


def test_make_backend(policy):
    model, processor = policy
    assert isinstance(make_backend(model, processor), HFSharedPrefixBackend)
    assert isinstance(make_backend(model, processor, share_prompt=False), HFNaiveBackend)
    with pytest.raises(UserError, match="rollout.backend: unknown rollout backend 'vllm2'"):
        make_backend(model, processor, name="vllm2")
