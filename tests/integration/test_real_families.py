"""Every real family's interface (tests/fixtures/real_models, built by `mmrl model build-tiny --like`): the same
token, template and image checks on each.

Qwen2-VL, Qwen2.5-VL, Qwen3-VL (Instruct and Thinking), Gemma 3 (real config and template, stand-in tokenizer: see
real_families.py) and SmolVLM. The models are built once per session (`real_family_models`) and loaded once per module.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from mmrl.cli import main
from mmrl.config import load_config
from mmrl.data.collate import IGNORE_INDEX, encode_one, encode_sft, end_of_turn_id
from mmrl.data.sample import Sample
from mmrl.generation import SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.generation.hf import HFNaiveBackend, HFSharedPrefixBackend
from mmrl.models.processor import folder_chat_template, load_processor
from mmrl.models.tokens import placeholder_token_ids
from tests.integration.real_families import FAMILIES, SHARES_PREFIX, SOURCES

# The token each family's template closes an assistant turn with, as its published files spell it.
TURN_END = {"qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>",
            "qwen3_vl_thinking": "<|im_end|>", "gemma3": "<end_of_turn>", "smolvlm": "<end_of_utterance>"}
# Config attributes of each family's placeholder / image-marker token ids.
MARKERS = {"qwen": ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
           "gemma3": ("image_token_index", "boi_token_index", "eoi_token_index"), "idefics3": ("image_token_id",)}


@pytest.fixture(scope="module")
def loaded(real_family_policies):
    return real_family_policies


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = {}
    for name, size in (("small", (40, 30)), ("wide", (150, 90)), ("square", (224, 224))):
        Image.new("RGB", size, (200, 40, 40)).save(root / f"{name}.png")
        paths[name] = root / f"{name}.png"
    return paths


def _sample(path, **kw) -> Sample:
    return Sample(id="s", images=[str(path)], prompt="<image>What color is it?", answer="red", task="open", **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tiny_model_keeps_the_folders_interface(family, real_family_models):
    """Interface files unchanged, the config's token ids and vocabulary kept, the template the folder's processor
    template (not tokenizer_config's: Qwen3-VL Thinking ships the Instruct one there), the model small."""
    built = real_family_models(family)
    source = built.parent / "src" / family  # the folder it was built from (`real_family_models`)
    for name in ("chat_template.json", "preprocessor_config.json", "generation_config.json", "tokenizer_config.json"):
        if (source / name).is_file():
            assert (built / name).read_bytes() == (source / name).read_bytes(), name
    want, got = json.loads((source / "config.json").read_text()), json.loads((built / "config.json").read_text())
    for key in ("model_type", "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                "image_token_index", "boi_token_index", "eoi_token_index", "mm_tokens_per_image", "scale_factor"):
        if key in want:
            assert got[key] == want[key], key
    text = got.get("text_config", got)
    assert text["vocab_size"] == want.get("text_config", want).get("vocab_size", text["vocab_size"])
    assert text["hidden_size"] <= 64 and text["num_hidden_layers"] <= 2
    assert json.loads((built / "mmrl_tiny.json").read_text())["parameters"] < 20_000_000
    processor = load_processor(str(built))
    assert processor.chat_template == folder_chat_template(str(source))
    assert processor.tokenizer.chat_template == processor.chat_template
    # The tokenizer's vocabulary and added tokens are the folder's, at the same ids.
    tokenizer = processor.tokenizer
    added = json.loads((source / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {})
    assert all(tokenizer.convert_tokens_to_ids(spec["content"]) == int(i) for i, spec in added.items())
    if (source / "vocab.json").is_file():
        vocab = json.loads((source / "vocab.json").read_text())
        assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in list(vocab.items())[::997])


def test_build_tiny_like_refuses_bad_folders_in_one_line(tmp_path, capsys):
    gemma = SOURCES["gemma3"][0]
    unknown = tmp_path / "unknown"
    shutil.copytree(SOURCES["smolvlm"][0], unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "frobnicator"}))
    no_template = tmp_path / "no_template"
    no_template.mkdir()
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        shutil.copyfile(SOURCES["smolvlm"][0] / name, no_template / name)
    text_only = tmp_path / "text_only"
    shutil.copytree(SOURCES["smolvlm"][0], text_only)
    (text_only / "config.json").write_text(json.dumps(config["text_config"]))  # a llama config: no vision
    cases = [(gemma, "no tokenizer"), (SOURCES["qwen3_vl_thinking"][1].parent, "config.json is missing"),
             (unknown, "model_type 'frobnicator'"), (no_template, "no chat template"),
             (text_only, "not an image-text-to-text model"), (tmp_path / "absent", "no such directory")]
    for folder, message in cases:
        assert main(["model", "build-tiny", str(tmp_path / "out"), "--like", str(folder)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "config.json").exists()


def test_build_tiny_like_refuses_two_templates_and_an_out_dir_it_would_clobber(tmp_path, capsys):
    """OUT = the model folder ended in a SameFileError traceback (its config and weights next); a non-empty OUT had its
    weights replaced; a .jinja and a .json template that differ are rendered by different readers (transformers 5:
    the processor the .json, the tokenizer the .jinja)."""
    from mmrl.models.tiny_like import LIKE_MARKER, check_out

    folder = tmp_path / "smol"
    shutil.copytree(SOURCES["smolvlm"][0], folder)
    config = (folder / "config.json").read_bytes()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_text("the user's weights")
    two = tmp_path / "two"
    shutil.copytree(folder, two)
    (two / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    other_ids = tmp_path / "other_ids"
    shutil.copytree(folder, other_ids)
    (other_ids / "config.json").write_text(json.dumps({**json.loads(config), "image_token_id": 5}))
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "chat_template.json").write_text("{not json")
    for out, like, message in [(folder, folder, "is the --like folder itself"), (taken, folder, "is not empty"),
                               (tmp_path / "out", two, "hold different chat templates"),
                               (tmp_path / "out", broken, "chat_template.json: not a JSON object"),
                               (tmp_path / "out", other_ids, "writes <image> (id 49190) for an image")]:
        assert main(["model", "build-tiny", str(out), "--like", str(like)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert (folder / "config.json").read_bytes() == config
    assert (taken / "model.safetensors").read_text() == "the user's weights"
    with pytest.raises(Exception, match="hold different chat templates"):
        load_processor(str(two))
    # An earlier tiny build is rebuilt in place: what it wrote goes (no other family's template is left), the rest stays.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in (LIKE_MARKER, "chat_template.jinja", "model.safetensors", "notes.txt"):
        (earlier / name).write_text("x")
    check_out(earlier, folder)
    assert sorted(p.name for p in earlier.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("family", FAMILIES)
def test_rollouts_end_on_the_turn_end_and_generation_config_eos(family, loaded, images):
    """The ids that end a completion are the template's turn end and the generation config's EOS ids; a completion
    that samples one stops there and its text holds no end-of-turn or pad token. Placeholders are never sampled."""
    model, processor = loaded(family)
    tokenizer = processor.tokenizer
    turn_end = tokenizer.convert_tokens_to_ids(TURN_END[family])
    assert end_of_turn_id(processor) == turn_end
    backend = make_backend(model, processor)
    assert isinstance(backend, HFSharedPrefixBackend if SHARES_PREFIX[family] else HFNaiveBackend)
    gen_eos = model.generation_config.eos_token_id
    assert {turn_end, *([gen_eos] if isinstance(gen_eos, int) else gen_eos)} <= set(backend.eos_ids)
    # A generation config that lists only the tokenizer's EOS (Gemma's is <eos>) still stops at the turn's end.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    try:
        assert turn_end in make_backend(model, processor).eos_ids
    finally:
        model.generation_config.eos_token_id = gen_eos
    prompt = encode_one(processor, _sample(images["small"]), load_config(None).data)
    head = model.lm_head
    for boosted, want_end in ((backend.banned_ids, None), ([turn_end], turn_end)):
        boost = torch.zeros(head.weight.shape[0])
        boost[boosted] = 1e4
        handle = head.register_forward_hook(lambda _m, _i, out, b=boost: out + b.to(out.dtype))
        try:  # sampled rows for the ban, a greedy row for the stop
            params = SamplingParams(n=2, max_new_tokens=3, temperature=1.0) if want_end is None else \
                SamplingParams(n=1, max_new_tokens=3, temperature=0.0)
            batch = backend.rollout([prompt], params, generator=torch.Generator().manual_seed(0))
        finally:
            handle.remove()
        assert not torch.isin(batch.completion_ids[batch.completion_mask.bool()], torch.tensor(backend.banned_ids)).any()
        if want_end is not None:
            assert batch.completion_ids[:, 0].tolist() == [want_end] * len(batch.texts)
            assert batch.completion_mask.sum(1).tolist() == [1] * len(batch.texts) and not batch.truncated.any()
            assert batch.texts == [""] * len(batch.texts)


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholders_of_every_family_are_banned(family, loaded):
    """Image, video and vision start/end tokens (whatever the family calls them) are never sampled."""
    model, processor = loaded(family)
    banned = set(placeholder_token_ids(model, processor.tokenizer))
    kind = "qwen" if model.config.model_type.startswith("qwen") else model.config.model_type
    assert {getattr(model.config, attr) for attr in MARKERS[kind]} <= banned
    if kind == "idefics3":  # the tokens its processor wraps each image in
        names = ("<fake_token_around_image>", "<global-img>", "<image>")
        assert set(processor.tokenizer.convert_tokens_to_ids(list(names))) <= banned
    assert set(backend_ids := processor.tokenizer.convert_tokens_to_ids([TURN_END[family]])).isdisjoint(banned), \
        backend_ids


def _image_token_count(processor, model, ids: torch.Tensor) -> int:
    token = getattr(model.config, "image_token_id", None)
    token = token if token is not None else model.config.image_token_index
    return int((ids == token).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_equal_the_processors_and_the_vision_towers(family, loaded, images):
    """For several image sizes, the image tokens mmrl encodes equal what the processor gives for the image mmrl hands
    it, resizing by its own rules, and the model takes them (one feature per token, checked by its own forward).
    data.min_pixels is the families' published 3136: below it, mmrl's own bounds win on purpose (data.min/max_pixels
    is the one resize rule; the vLLM engine's processor is widened to match)."""
    from mmrl.data.vision import prepare_sample_images

    model, processor = loaded(family)
    data = load_config(None, ["data.min_pixels=3136"]).data
    for name in ("small", "wide", "square"):
        sample = _sample(images[name])
        encoded = encode_one(processor, sample, data)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        own = processor(text=[text], images=prepare_sample_images(sample, data), return_tensors="pt")
        count = _image_token_count(processor, model, encoded["input_ids"])
        assert count == _image_token_count(processor, model, own["input_ids"]) > 0, name
        assert torch.equal(encoded["input_ids"], own["input_ids"])
        with torch.no_grad():
            model(**encoded)  # raises when image tokens and features differ


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_labels_are_the_assistant_turn_under_the_real_template(family, loaded, images):
    """Labels cover the response as the template renders it and the turn's end token, nothing after it; the prompt is
    exactly the generation prompt. A multi-turn conversation is labelled on its last assistant turn only (the
    Thinking template drops earlier turns' reasoning in both renderings)."""
    model, processor = loaded(family)
    tokenizer = processor.tokenizer
    turn_end = tokenizer.convert_tokens_to_ids(TURN_END[family])
    history = [{"role": "user", "content": "<image>Count them."},
               {"role": "assistant", "content": "<think>two and one</think><answer>3</answer>"},
               {"role": "user", "content": "And the color?"}]
    for prompt in ("<image>What color is it?", history):
        sample = Sample(id="s", images=[str(images["small"])], prompt=prompt, answer="red", task="open",
                        response="<think>it is red</think><answer>red</answer>")
        batch = encode_sft(processor, [sample], load_config(None).data)
        labels, ids = batch["labels"][0], batch["input_ids"][0]
        learned = (labels != IGNORE_INDEX).nonzero().flatten()
        assert learned.tolist() == list(range(int(learned[0]), int(learned[-1]) + 1))  # one span
        assert int(labels[learned[-1]]) == turn_end and int(learned[-1]) == len(ids) - 1 - _trailing(ids, turn_end)
        assert torch.equal(labels[learned], ids[learned])
        text = tokenizer.decode(labels[learned])
        assert "<answer>red</answer>" in text and "3</answer>" not in text and "it is red" in text
        prompt_ids = encode_one(processor, sample, load_config(None).data)["input_ids"][0]
        assert torch.equal(ids[: len(prompt_ids)], prompt_ids) and int(learned[0]) == len(prompt_ids)


def _trailing(ids: torch.Tensor, turn_end: int) -> int:
    """Tokens the template writes after the last turn end (a newline for most families)."""
    last = max(i for i, t in enumerate(ids.tolist()) if t == turn_end)
    return len(ids) - 1 - last


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_thinking"])
def test_mm_token_type_ids_cover_completion_tokens(family, loaded, images):
    """Qwen3-VL's M-RoPE reads mm_token_type_ids: the naive forward over [prompt, completion] extends it with text
    type over the completion, and the shared-prefix log-probs equal the naive ones."""
    from mmrl.models.logprobs import completion_logprobs, naive_completion_logprobs, repeat_prompt

    model, processor = loaded(family)
    prompt = encode_one(processor, _sample(images["wide"]), load_config(None).data)
    assert prompt["mm_token_type_ids"].shape == prompt["input_ids"].shape and prompt["mm_token_type_ids"].any()
    ids = torch.randint(0, 5000, (2, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    seen = {}
    handle = model.model.register_forward_pre_hook(lambda _m, _a, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            naive = naive_completion_logprobs(model, prompt, ids, mask)
    finally:
        handle.remove()
    types = seen["mm_token_type_ids"]
    assert types.shape == seen["input_ids"].shape == (2, prompt["input_ids"].shape[1] + 4)
    assert torch.equal(types[:, -4:], torch.zeros(2, 4, dtype=types.dtype))
    assert torch.equal(types[:, :-4], repeat_prompt(prompt, 2)["mm_token_type_ids"])
    with torch.no_grad():
        shared = completion_logprobs(model, prompt, ids, mask)
    assert (shared - naive).abs().max() < 1e-4
