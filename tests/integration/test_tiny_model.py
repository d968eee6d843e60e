"""The embedded tiny VLM: deterministic build, HF round trip, offline loading, generation from an image prompt."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from mmrl.models.processor import load_processor
from mmrl.models.tiny import MARKER, REASONING_TOKENS, build_tiny_model


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_identical_weights_and_tokenizer(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", preset="tiny", seed=0)
    first = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    second = AutoModelForImageTextToText.from_pretrained(again)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _digest(tiny_model_dir / "tokenizer.json") == _digest(again / "tokenizer.json")
    other = build_tiny_model(tmp_path / "other", preset="tiny", seed=1)
    c = AutoModelForImageTextToText.from_pretrained(other).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_weights_drawn_on_a_device_and_saved_in_bf16(tmp_path, tiny_model_dir):
    """The GPU check's 3B step draws the weights on the GPU and saves them in bf16 (half the disk traffic): the saved
    tensors are bf16, the same seed's CPU draw rounded to bf16 (on the CPU the draw is the same), and fp32 loads them."""
    from safetensors import safe_open

    path = build_tiny_model(tmp_path / "bf16", preset="tiny", seed=0, init_device="cpu", save_dtype=torch.bfloat16)
    with safe_open(str(path / "model.safetensors"), "pt") as saved:
        dtypes = {saved.get_tensor(k).dtype for k in saved.keys()}
    assert dtypes == {torch.bfloat16}
    reference = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    loaded = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], reference[k].bfloat16().float())
               for k in reference)


def test_plain_transformers_loads_it_offline(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    image_processor = AutoImageProcessor.from_pretrained(tiny_model_dir)
    assert image_processor.size["shortest_edge"] == 28 * 28  # min_pixels, in transformers 5 naming
    info = json.loads((tiny_model_dir / MARKER).read_text())
    assert 1_000_000 <= info["parameters"] <= 5_000_000
    for name in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|endoftext|>"):
        assert tokenizer.convert_tokens_to_ids(name) != tokenizer.unk_token_id
        assert len(tokenizer.tokenize(name)) == 1


def test_reasoning_tags_are_single_tokens_that_survive_decoding(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "<think> a red square </think><answer> red </answer>"
    ids = tokenizer(text)["input_ids"]
    for tag in REASONING_TOKENS:
        assert tokenizer.convert_tokens_to_ids(tag) in ids
    # Not special: skip_special_tokens must keep them (else every format reward silently reads 0).
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_processor_round_trip_and_generation_from_an_image_prompt(tiny_model_dir, tmp_path):
    processor = load_processor(str(tiny_model_dir))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    model.save_pretrained(tmp_path / "copy")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "copy")
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), reloaded.state_dict().values()))

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 56), (255, 0, 0))], return_tensors="pt")
    # 56x56 -> 4x4 patches of 14 -> 2x2 merged tokens.
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 4
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True)
    new_tokens = out[0, inputs["input_ids"].shape[1]:]
    assert 1 <= new_tokens.numel() <= 6
    greedy_a = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    greedy_b = reloaded.eval().generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(greedy_a, greedy_b)


@pytest.mark.parametrize("preset,low,high", [("small", 15_000_000, 60_000_000)])
def test_presets_have_the_documented_sizes(preset, low, high):
    from mmrl.models.tiny import PRESETS, build_config, build_tokenizer

    spec = PRESETS[preset]
    config = build_config(spec, build_tokenizer(spec.vocab_size))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert low <= n <= high, n


def test_big_architecture_presets_match_published_dimensions():
    from mmrl.models.tiny import PRESETS, build_config

    config = build_config(PRESETS["qwen2.5-vl-7b"])
    assert config.text_config.hidden_size == 3584 and config.text_config.num_hidden_layers == 28
    assert config.vision_config.depth == 32 and config.vision_config.out_hidden_size == 3584
    assert PRESETS["qwen2.5-vl-3b"].text_hidden == 2048 and PRESETS["qwen2.5-vl-3b"].text_layers == 36
