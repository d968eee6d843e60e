"""The embedded tiny VLM: a Qwen2.5-VL-architecture model with random weights, built offline and deterministically.

Tests and the quickstart cannot download a model, so mmrl builds its own: a byte-level BPE tokenizer trained here on a
generated corpus (with Qwen's chat and vision special tokens, and single tokens for the reasoning tags), the real
Qwen2.5-VL processor classes with small `min_pixels`/`max_pixels`, and the real `Qwen2_5_VLForConditionalGeneration`
from a small config. It is saved in Hugging Face format, so `from_pretrained` loads it like any checkpoint: the tiny
model is a configuration, not a fork.

>>> from mmrl.models.tiny import build_tiny_model
>>> path = build_tiny_model("/tmp/mmrl-tiny-doctest", preset="tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import torch

from mmrl.errors import UserError
from mmrl.models.presets import PRESETS, TinyPreset
from mmrl.models.processor import _allow_missing_video_processor, save_processor

# Qwen's own special tokens (the processor and chat template look for these names).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Reasoning tags are *added but not special* tokens: `decode(skip_special_tokens=True)` must keep them, or every
# format and answer reward silently reads 0.
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL-style chat template without the default system prompt (fewer tokens for a tiny model). The
# `{% generation %}` block lets `apply_chat_template(..., return_assistant_tokens_mask=True)` mark assistant tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


BUILD_VERSION = "3"  # bump when the build recipe changes so cached builds are rebuilt
MARKER = "mmrl_tiny.json"


def _corpus(seed: int) -> list[str]:
    """A deterministic text corpus covering what the synthetic tasks, prompts and answers say."""
    rng = random.Random(seed)
    colors = "red green blue yellow purple orange black white gray pink brown cyan".split()
    shapes = "circle square triangle star rectangle ellipse shape shapes object objects".split()
    words = (
        "what color is the how many are there in image picture count answer question yes no true false correct "
        "incorrect left right above below top bottom of and or a an this that which one select option choose from "
        "following choices please think step by step then give final box bounding coordinates find locate number "
        "sum add digits read written value equals total first second third is it statement judge whether open app "
        "click scroll up down navigate back input text type look see I the shape at position x y width height "
        "zero one two three four five six seven eight nine ten reason so therefore because"
    ).split()
    lines: list[str] = []
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.3:
            lines.append(" ".join(rng.choice(words + colors + shapes) for _ in range(rng.randint(4, 14))))
        elif kind < 0.5:
            c, s = rng.choice(colors), rng.choice(shapes)
            lines.append(f"<think> I see a {c} {s}. </think><answer> {c} </answer>")
        elif kind < 0.65:
            n = rng.randint(0, 1000)
            lines.append(f"<think> count {n} </think><answer> {n} </answer> [{n}, {rng.randint(0, 999)}]")
        elif kind < 0.75:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            lines.append(f"{a} + {b} = {a + b}; \\frac{{{a}}}{{{b}}} \\boxed{{{a * b}}} $x^2$ 3.14")
        elif kind < 0.85:
            lines.append(f"({rng.choice('ABCDE')}) {rng.choice(colors)} A. B. C. D. E. Answer: {rng.choice('ABCD')}")
        else:
            lines.append(json.dumps({"action": rng.choice(["click", "scroll", "open_app", "input_text"]),
                                     "coordinate": [rng.randint(0, 999), rng.randint(0, 999)]}))
    return lines


def build_tokenizer(vocab_size: int, seed: int = 0, arch: str = "qwen2_5_vl"):
    """Train a byte-level BPE tokenizer on the generated corpus and wrap it as the architecture's tokenizer: Qwen's
    class and special tokens for the Qwen family, a fast tokenizer with Gemma's turn and image tokens for Gemma3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    from mmrl.models.tiny_archs import GEMMA3_CHAT_TEMPLATE, GEMMA3_SPECIAL_TOKENS, gemma3_tokenizer_kwargs

    specials = GEMMA3_SPECIAL_TOKENS if arch == "gemma3" else SPECIAL_TOKENS

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials) - len(REASONING_TOKENS),
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(seed), trainer=trainer)
    if arch == "gemma3":
        backend.add_special_tokens(specials)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=GEMMA3_CHAT_TEMPLATE,
                                            **gemma3_tokenizer_kwargs())
        tokenizer.add_tokens(REASONING_TOKENS, special_tokens=False)
        tokenizer.model_max_length = 32768
        return tokenizer
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens(REASONING_TOKENS, special_tokens=False)
    tokenizer.model_max_length = 32768
    return tokenizer


def build_processor(tokenizer, preset: TinyPreset):
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=preset.min_pixels,
        max_pixels=preset.max_pixels,
        size={"shortest_edge": preset.min_pixels, "longest_edge": preset.max_pixels},
    )
    with _allow_missing_video_processor():
        return Qwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=CHAT_TEMPLATE
        )


def _video_config(preset: TinyPreset) -> dict:
    config = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "min_pixels": preset.min_pixels,
        "max_pixels": preset.max_pixels,
        "size": {"shortest_edge": preset.min_pixels, "longest_edge": preset.max_pixels},
        "patch_size": preset.patch_size,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    if preset.arch == "qwen3_vl":  # its video processor bounds pixels through `size` only
        config["video_processor_type"] = "Qwen3VLVideoProcessor"
        del config["min_pixels"], config["max_pixels"]
    return config


def build_config(preset: TinyPreset, tokenizer=None):
    from transformers import Qwen2_5_VLConfig

    vocab = len(tokenizer) if tokenizer is not None else preset.vocab_size
    ids = (lambda t: tokenizer.convert_tokens_to_ids(t)) if tokenizer is not None else None
    head_dim = preset.text_hidden // preset.text_heads
    if sum(preset.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {preset.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    text_config = {
        "vocab_size": vocab,
        "hidden_size": preset.text_hidden,
        "intermediate_size": preset.text_intermediate,
        "num_hidden_layers": preset.text_layers,
        "num_attention_heads": preset.text_heads,
        "num_key_value_heads": preset.text_kv_heads,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(preset.mrope_section)},
        "tie_word_embeddings": preset.tie_embeddings,
    }
    if ids is not None:
        text_config.update(bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    vision_config = {
        "depth": preset.vision_depth,
        "hidden_size": preset.vision_hidden,
        "intermediate_size": preset.vision_intermediate,
        "num_heads": preset.vision_heads,
        "out_hidden_size": preset.text_hidden,
        "fullatt_block_indexes": list(preset.fullatt_block_indexes),
        "window_size": 112,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    kwargs = {}
    if ids is not None:
        kwargs = {
            "image_token_id": ids("<|image_pad|>"),
            "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"),
            "vision_end_token_id": ids("<|vision_end|>"),
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        }
    config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **kwargs)
    config.tie_word_embeddings = preset.tie_embeddings
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def build_model(config, seed: int = 0, init_device: str | torch.device | None = None):
    """Random weights of `config` under a fixed seed, in float32. On the CPU (default) the same seed gives
    bit-identical weights everywhere; `init_device` draws them on that device instead (a CUDA device draws the 3B
    preset in seconds where the CPU takes minutes; its random stream differs from the CPU's)."""
    from transformers import AutoModelForImageTextToText

    device = torch.device(init_device or "cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
        if config.model_type == "gemma3":
            from mmrl.models.tiny_archs import finish_gemma3_init

            finish_gemma3_init(model)
    return model.to(torch.float32).eval()


def build_parts(spec: TinyPreset, seed: int):
    """(tokenizer, processor, config, eos token, pad token) of a preset, by architecture."""
    from mmrl.models.tiny_archs import build_gemma3, build_qwen3_vl

    tokenizer = build_tokenizer(min(spec.vocab_size, 1024), seed=seed, arch=spec.arch)
    if spec.arch == "qwen3_vl":
        return (tokenizer, *build_qwen3_vl(spec, tokenizer), "<|im_end|>", "<|endoftext|>")
    if spec.arch == "gemma3":
        return (tokenizer, *build_gemma3(spec, tokenizer), "<end_of_turn>", "<pad>")
    processor = build_processor(tokenizer, spec)
    config = build_config(spec, tokenizer if spec.vocab_size <= 1024 else None)
    if spec.vocab_size > 1024:
        # Big-architecture presets keep Qwen's published vocabulary size; our small tokenizer ids all fit inside it.
        for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
            setattr(config, name, tokenizer.convert_tokens_to_ids(token))
        config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return tokenizer, processor, config, "<|im_end|>", "<|endoftext|>"


def build_tiny_model(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0,
                     init_device: str | torch.device | None = None, save_dtype: torch.dtype | None = None) -> Path:
    """Build preset `preset` into `out_dir` (HF format: weights, config, tokenizer, processor); return the path.
    `init_device`: where the random weights are drawn (see `build_model`); they are saved from there. `save_dtype`:
    the weights' dtype on disk (default float32; bfloat16 halves the writing and reading of a 3B model)."""
    if preset not in PRESETS:
        raise UserError(f"unknown tiny-model preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, processor, config, eos, pad = build_parts(spec, seed)
    model = build_model(config, seed=seed, init_device=init_device)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(eos)
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids(pad)
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    if save_dtype is not None:
        model.to(save_dtype)
    model.save_pretrained(out)
    save_processor(processor, out, video_config=_video_config(spec) if spec.arch != "gemma3" else None)
    n_params = sum(p.numel() for p in model.parameters())
    (out / MARKER).write_text(json.dumps({"preset": preset, "seed": seed, "version": BUILD_VERSION,
                                          "parameters": n_params}, indent=2))
    return out


def tiny_cache_dir() -> Path:
    root = os.environ.get("MMRL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmrl")
    return Path(root) / "models"


def ensure_tiny_model(preset: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached build of `preset`, building it once (atomically) if it is missing or stale."""
    if preset not in PRESETS:
        raise UserError(f"unknown tiny-model preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    root = Path(cache_dir) if cache_dir else tiny_cache_dir()
    key = hashlib.sha1(f"{preset}-{seed}-{BUILD_VERSION}".encode()).hexdigest()[:10]
    path = root / f"{preset}-seed{seed}-{key}"
    if (path / MARKER).exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{path.name}.tmp-{os.getpid()}"
    build_tiny_model(staging, preset=preset, seed=seed)
    try:
        os.replace(staging, path)
    except OSError:
        # Another process finished the same build first; keep theirs.
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return path
