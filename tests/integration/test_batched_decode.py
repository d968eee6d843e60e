"""Batched decode across prompts (shared-prefix backend): prompts of different lengths and image sizes decode together,
and each prompt's completions and sampler log-probs are those it gets alone."""

import copy

import pytest
import torch

from mmrl.config import load_config
from mmrl.generation import SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.generation.hf import DEFAULT_MAX_BATCH_ROWS, HFSharedPrefixBackend
from mmrl.models.loading import load_policy
from mmrl.models.logprobs import completion_logprobs
from mmrl.parallel.distributed import stream_seed
from tests.integration.chat_prompts import image_prompt, text_prompt


@pytest.fixture(scope="module")
def prompts(policy):
    """Three prompts of very different lengths: a 112 px image, a text-only question, a 56 px image."""
    _, processor = policy
    out = [image_prompt(processor, 112, "how many shapes are there in the picture?", 0),
           text_prompt(processor, "what is 2 + 3?"),
           image_prompt(processor, 56, "what colour?", 1)]
    assert len({p["input_ids"].shape[1] for p in out}) == 3
    return out


@pytest.fixture(scope="module")
def eos_model(policy, prompts):
    """A copy whose EOS logit is pushed up along the mean final hidden state: sampled branches end at varied steps, so
    rows leave the batch cache while others still decode."""
    model, processor = policy
    model = copy.deepcopy(model)
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        direction = model.model(**prompts[0]).last_hidden_state[0].mean(0)
        model.lm_head.weight[eos] = direction * (4.0 / direction.dot(direction))
    model.model.rope_deltas = None
    return model


def alone(backend, prompts, params, seeds=None):
    """Each prompt in its own call: the one-prompt-at-a-time path."""
    batches = [backend.rollout([p], params, prompt_seeds=None if seeds is None else [s])
               for p, s in zip(prompts, seeds or [None] * len(prompts), strict=True)]
    return batches


def rows_equal(together, batches, n):
    for i, single in enumerate(batches):
        rows = slice(i * n, (i + 1) * n)
        width = single.completion_ids.shape[1]
        assert torch.equal(together.completion_mask[rows].sum(1), single.completion_mask.sum(1)), i
        assert torch.equal(together.completion_ids[rows][:, :width], single.completion_ids), i
        assert (together.completion_mask[rows][:, width:] == 0).all()
        lp = (together.logprobs[rows][:, :width] - single.logprobs).abs().max()
        assert lp < 1e-5, (i, float(lp))
        assert together.texts[rows] == single.texts and torch.equal(together.truncated[rows], single.truncated)


def test_sampled_prompts_together_equal_each_alone(eos_model, policy, prompts):
    _, processor = policy
    backend = HFSharedPrefixBackend(eos_model, processor)
    params = SamplingParams(n=4, max_new_tokens=12, temperature=0.9, top_p=0.95, top_k=300, logprobs=True)
    seeds = [stream_seed(3, 0, d) for d in range(len(prompts))]
    together = backend.rollout(prompts, params, prompt_seeds=seeds)
    lengths = together.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 2 and together.truncated.any()  # rows really left the batch at varied steps
    # One decode forward per step for all 12 rows (one prompt at a time would take 3 x as many), each image encoded once.
    assert together.counters["decode_steps"] == int(lengths.max()) - 1
    assert together.counters["images_encoded"] == 2
    rows_equal(together, alone(backend, prompts, params, seeds), params.n)
    # A cap of 5 rows: one prompt (4 rows) per batch; still the same completions.
    capped = HFSharedPrefixBackend(eos_model, processor, max_batch_rows=5).rollout(prompts, params, prompt_seeds=seeds)
    assert torch.equal(capped.completion_ids, together.completion_ids)
    assert capped.counters["decode_steps"] > together.counters["decode_steps"]


def test_greedy_together_equals_alone(policy, prompts):
    model, processor = policy
    backend = HFSharedPrefixBackend(model, processor)
    # Stop at the token the longest prompt emits 3rd when alone: its rows finish early while the shorter prompts go
    # on, so the padding only it needed is cut from the cache mid-decode.
    first = backend.rollout(prompts[:1], SamplingParams(n=1, max_new_tokens=4, temperature=0.0))
    stop = int(first.completion_ids[0, 2])
    params = SamplingParams(n=2, max_new_tokens=10, temperature=0.0, stop_token_ids=(stop,), logprobs=True)
    together = backend.rollout(prompts, params)
    assert together.completion_mask[:2].sum(1).tolist() == [3, 3]
    assert together.completion_mask[2:].sum(1).max() > 3
    assert together.counters["decode_steps"] == int(together.completion_mask.sum(1).max()) - 1
    rows_equal(together, alone(backend, prompts, params), params.n)


def test_sampler_logprobs_of_a_batch_match_the_training_forward(eos_model, policy, prompts):
    """Per-row M-RoPE positions and rope deltas: what each batched row says it sampled with is what the training
    forward of its own prompt recomputes."""
    _, processor = policy
    params = SamplingParams(n=3, max_new_tokens=10, temperature=0.8)
    batch = HFSharedPrefixBackend(eos_model, processor).rollout(prompts, params, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            rows = batch.prompt_index == p
            ids, mask = batch.completion_ids[rows], batch.completion_mask[rows]
            width = int(mask.sum(1).max())
            recomputed = completion_logprobs(eos_model, prompt, ids[:, :width], mask[:, :width], temperature=0.8)
            assert (recomputed - batch.logprobs[rows][:, :width]).abs().max() < 1e-5


def test_shared_generator_gives_each_prompt_its_own_stream(policy, prompts):
    """With one generator for the call, prompt i draws from a stream seeded by the generator's i-th draw: the same
    completions however many rows decode at once, and different prompts don't mirror each other."""
    model, processor = policy
    params = SamplingParams(n=3, max_new_tokens=6, temperature=1.0)
    wide = HFSharedPrefixBackend(model, processor).rollout(prompts, params, generator=torch.Generator().manual_seed(9))
    narrow = HFSharedPrefixBackend(model, processor, max_batch_rows=1).rollout(
        prompts, params, generator=torch.Generator().manual_seed(9))
    assert torch.equal(wide.completion_ids, narrow.completion_ids)
    assert len({tuple(r) for r in wide.completion_ids.tolist()}) > 3


def test_max_batch_rows_from_config_and_refused_when_bad(policy):
    model, processor = policy
    cfg = load_config(None, ["rollout.max_batch_rows=24"])
    assert make_backend(model, processor, rollout_cfg=cfg.rollout).max_batch_rows == 24
    assert make_backend(model, processor).max_batch_rows == DEFAULT_MAX_BATCH_ROWS == load_config(None).rollout.max_batch_rows
    with pytest.raises(Exception, match="max_batch_rows"):
        load_config(None, ["rollout.max_batch_rows=0"])
    with pytest.raises(ValueError, match="max_batch_rows"):
        HFSharedPrefixBackend(model, processor, max_batch_rows=0)


def test_qwen3_vl_prompts_batch_exactly():
    """Qwen3-VL (interleaved M-RoPE, DeepStack, patch 16): prompts with images of different sizes decode together;
    each row's sampler log-probs are what the training forward of its own prompt recomputes."""
    loaded = load_policy(load_config(None, ["model.name_or_path=tiny-qwen3-vl"]).model)
    model, processor = loaded.model.float(), loaded.processor
    prompts = [image_prompt(processor, 96, "what color is it?", 5), text_prompt(processor, "say a word"),
               image_prompt(processor, 32, "and this one?", 6)]
    assert len({p["input_ids"].shape[1] for p in prompts}) == 3
    backend = make_backend(model, processor)
    params = SamplingParams(n=2, max_new_tokens=6, temperature=0.7)
    batch = backend.rollout(prompts, params, generator=torch.Generator().manual_seed(2))
    assert batch.counters["decode_steps"] == 5
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            rows = batch.prompt_index == p
            recomputed = completion_logprobs(model, prompt, batch.completion_ids[rows], batch.completion_mask[rows],
                                             temperature=0.7)
            assert (recomputed - batch.logprobs[rows]).abs().max() < 1e-5
    greedy = SamplingParams(n=1, max_new_tokens=6, temperature=0.0, logprobs=True)
    rows_equal(backend.rollout(prompts, greedy), alone(backend, prompts, greedy), 1)
