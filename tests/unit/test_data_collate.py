"""Batching with the real tiny processor: left padding, SFT labels on assistant tokens only, no truncation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmrl.config.data import DataConfig
from mmrl.data.collate import encode_one, encode_prompts, encode_sft
from mmrl.data.sample import Sample
from mmrl.errors import DataError


@pytest.fixture(scope="module")
def processor():
    from mmrl.models.processor import load_processor
    from mmrl.models.tiny import ensure_tiny_model

    return load_processor(str(ensure_tiny_model("tiny")))


CFG = DataConfig(min_pixels=28 * 28, max_pixels=56 * 56)


def _sample(sid, prompt="What color?", images=1, response="<think> red </think><answer> red </answer>"):
    return Sample(id=sid, prompt=prompt, answer="red", images=[Image.new("RGB", (56, 56), "red")] * images,
                  response=response)


def test_left_padded_prompt_batch(processor):
    short, long = _sample("a"), _sample("b", prompt="Compare <image> and <image> carefully please", images=2)
    batch = encode_prompts(processor, [short, long], CFG)
    assert set(batch) >= {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 3  # 56x56 -> 4x4 patches of 14, order kept
    pad = processor.tokenizer.pad_token_id
    assert (batch["input_ids"][0][mask[0] == 0] == pad).all()
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_token).sum() == 3 * 4  # 16 patches / merge 4 per image
    assert (batch["mm_token_type_ids"] > 0).sum() == 3 * 4


def test_sft_labels_cover_only_the_response_and_im_end(processor):
    sample = _sample("s")
    item = encode_one(processor, sample, CFG, with_response=True)
    labels = item["labels"][0]
    learned = processor.tokenizer.decode(labels[labels != -100])
    assert learned == "<think> red </think><answer> red </answer><|im_end|>"
    batch = encode_sft(processor, [sample, _sample("t", response="<answer> blue </answer>")], CFG)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["attention_mask"][1, -1] == 0 and batch["labels"][1, -1] == -100  # right padding


def test_over_long_prompt_rejected_by_id_not_truncated(processor):
    cfg = DataConfig(min_pixels=28 * 28, max_pixels=56 * 56, max_prompt_length=16)
    with pytest.raises(DataError, match="sample long-1: prompt is .* tokens .*max_prompt_length=16"):
        encode_prompts(processor, [_sample("long-1", prompt="word " * 30)], cfg)
    with pytest.raises(DataError, match="sample s: .* above max_length=8"):
        encode_sft(processor, [_sample("s")], CFG, max_length=8)


def test_model_forward_on_batch(processor):
    from transformers import AutoModelForImageTextToText

    from mmrl.models.tiny import ensure_tiny_model

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(str(ensure_tiny_model("tiny")))
    batch = encode_sft(processor, [_sample("a"), _sample("b", prompt="<image><image>Same?", images=2)], CFG)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)


def test_end_of_turn_is_the_token_after_the_whitespace_a_template_writes_before_it():
    """A template that writes `{{ content }}\\n<end>` or `' ' + eos` (Llama-2) ends its turns with <end>, not with the
    newline or the space: read as the end, every rollout stopped at its first newline or space."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from mmrl.data.collate import end_of_turn_id

    folder = Path(__file__).resolve().parents[1] / "fixtures" / "real_models" / "smolvlm" / "SmolVLM-256M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    want = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    for before in ("\n", " ", ""):
        tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'][0]['text'] }}" + before
                                   + "<end_of_utterance>\n{% endfor %}")
        tokenizer.__dict__.pop("_mmrl_end_of_turn", None)
        assert end_of_turn_id(tokenizer) == want, repr(before)
