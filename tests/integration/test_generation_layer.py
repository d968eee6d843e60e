"""The generation layer on the tiny model: greedy eval output pinned to what it was before the move, the protocol's
`generate` / `stream`, stop strings and ids, seeds, chat `Prompt`s with images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrl.config import load_config
from mmrl.data.sample import Sample
from mmrl.eval.generate import generate_completions
from mmrl.generation import Completion, GenerationBackend, Prompt, SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.models.loading import load_policy

GOLDEN = Path(__file__).parents[1] / "fixtures" / "generation" / "greedy_tiny.json"


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    loaded = load_policy(load_config(None).model, for_training=False)
    return loaded.model, loaded.processor


@pytest.fixture(scope="module")
def backend(policy):
    return make_backend(*policy)


def golden_samples(tmp_path: Path) -> list[Sample]:
    """The samples the golden file was made from (greedy, 24 new tokens, with the pre-move eval/generate.py)."""
    specs = [("red", 56, "What do you see?"), ("blue", 84, "How many shapes are there?"),
             ("green", 112, "Is the square green? Answer yes or no."), (None, 0, "What is 3 + 4?")]
    samples = []
    for i, (color, size, question) in enumerate(specs):
        images = []
        if color:
            path = tmp_path / f"g{i}.png"
            Image.new("RGB", (size, size), color).save(path)
            images = [str(path)]
        samples.append(Sample(id=f"g{i}", prompt=question, answer="1", task="math", images=images))
    return samples


def test_greedy_eval_is_token_identical_to_before_the_move(policy, tmp_path):
    model, processor = policy
    out = generate_completions(model, processor, golden_samples(tmp_path), load_config(None).data,
                               max_new_tokens=24, greedy=True, batch_size=4)
    golden = json.loads(GOLDEN.read_text())
    assert [c.token_ids for (c,) in out] == [g["token_ids"] for g in golden]
    assert [c.text for (c,) in out] == [g["text"] for g in golden]
    assert [(c.n_tokens, c.truncated) for (c,) in out] == [(g["n_tokens"], g["truncated"]) for g in golden]


def test_generate_chat_prompt_with_image_stream_and_seed(backend, tmp_path):
    assert isinstance(backend, GenerationBackend)
    image = Image.new("RGB", (64, 64), "purple")
    path = tmp_path / "p.png"
    image.save(path)
    prompts = [Prompt.from_question("What colour?", images=[image], system="Be brief."),
               Prompt.from_question("What colour?", images=[str(path)], system="Be brief."),
               Prompt([{"role": "user", "content": "Say something."}])]
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    out = backend.generate(prompts, greedy)
    assert [len(group) for group in out] == [1, 1, 1] and all(isinstance(c, Completion) for g in out for c in g)
    assert out[0][0].token_ids == out[1][0].token_ids  # a PIL image and its file are the same prompt
    assert out[0][0].finish_reason == "length" and len(out[0][0].token_ids) == 8
    assert "".join(backend.stream(prompts[0], greedy)) == out[0][0].text
    sampled = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=5, logprobs=True)
    first, again = backend.generate(prompts[:1], sampled), backend.generate(prompts[:1], sampled)
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in again[0]]
    assert len({tuple(c.token_ids) for c in first[0]}) > 1  # n samples, not n copies
    assert all(len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs) for c in first[0])


def test_stop_strings_and_stop_ids_end_completions(backend):
    prompt = Prompt.from_question("Tell me more.")
    free = backend.generate([prompt], SamplingParams(temperature=0, max_new_tokens=12))[0][0]
    # Stop at the text of the 4th generated token: the completion ends there, before that text, finish "stop".
    piece = backend.decoder.text(free.token_ids[3:4]).strip()
    assert piece
    stopped = backend.generate([prompt], SamplingParams(temperature=0, max_new_tokens=12, stop=(piece,)))[0][0]
    assert stopped.finish_reason == "stop" and piece not in stopped.text
    assert free.text.startswith(stopped.text) and len(stopped.token_ids) <= 4
    streamed = "".join(backend.stream(prompt, SamplingParams(temperature=0, max_new_tokens=12, stop=(piece,))))
    assert streamed == stopped.text
    by_id = backend.generate([prompt], SamplingParams(temperature=0, max_new_tokens=12,
                                                      stop_token_ids=(free.token_ids[2],)))[0][0]
    assert by_id.finish_reason == "stop" and by_id.token_ids == free.token_ids[:3]


def test_bad_params_and_prompts_are_refused(backend):
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="n must be 1"):
        list(backend.stream(Prompt.from_question("x"), SamplingParams(n=2)))
    with pytest.raises(ValueError, match="unsupported content part 'audio'"):
        backend.generate([Prompt([{"role": "user", "content": [{"type": "audio"}]}])], SamplingParams())
    with pytest.raises(Exception, match="missing.png"):
        backend.generate([Prompt.from_question("x", images=["/nonexistent/missing.png"])], SamplingParams())


def test_a_sampled_template_token_ends_the_completion_and_is_counted(policy):
    # Review: `<|im_start|>` sampled inside a completion leaked into its text (the model opening a turn of its own).
    from mmrl.generation.hf import HFNaiveBackend, HFSharedPrefixBackend

    model, processor = policy
    start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    boost = torch.zeros(model.lm_head.weight.shape[0])
    boost[start] = 1e4
    handle = model.lm_head.register_forward_hook(lambda _m, _i, out: out + boost.to(out.device, out.dtype))
    try:
        for backend in (HFSharedPrefixBackend(model, processor), HFNaiveBackend(model, processor)):
            assert start in backend.template_ids and "<think>" not in processor.tokenizer.convert_ids_to_tokens(
                backend.template_ids)
            batch = backend.rollout([Prompt.from_question("Hi")],
                                    SamplingParams(n=2, max_new_tokens=6, temperature=1.0),
                                    generator=torch.Generator().manual_seed(0))
            assert batch.texts == ["", ""] and batch.completion_mask.sum(dim=1).tolist() == [1, 1]
            assert not batch.truncated.any() and batch.counters["template_token_stops"] == 2
    finally:
        handle.remove()


@pytest.mark.parametrize("family, ends, kept", [
    ("qwen2_5_vl/Qwen2.5-VL-3B-Instruct", ["<|im_start|>", "<|vision_start|>"], ["<|box_start|>", "<|quad_start|>"]),
    ("gemma3/gemma-3-4b-it", ["<start_of_turn>", "<end_of_turn>"], []),
])
def test_template_tokens_of_real_tokenizers(family, ends, kept):
    """The template tokens of real families' tokenizers and chat templates (tests/fixtures/real_models): turn markup
    ends a completion; Qwen's grounding tokens, which answers hold and no template writes, do not."""
    from transformers import AutoTokenizer

    from mmrl.generation.decoding import template_token_ids

    folder = Path(__file__).parents[1] / "fixtures" / "real_models" / family
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    found = set(tokenizer.convert_ids_to_tokens(template_token_ids(tokenizer, template, vocab=len(tokenizer))))
    assert set(ends) <= found and not found & {*kept, "<think>", "</think>"}
