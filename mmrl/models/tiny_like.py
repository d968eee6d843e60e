"""`mmrl model build-tiny OUT --like DIR`: a tiny random-weight model with a real model folder's exact interface.

A user's pipeline meets its model at the tokenizer, the chat template, the processor and the special-token ids; none of
them depends on the weights. So from any Hugging Face model folder (config + tokenizer + processor + template, no
weights needed) this builds the same architecture with its dimensions shrunk and everything else kept: the folder's
tokenizer, template, processor and generation files are copied unchanged and its config keeps every token id, the full
vocabulary (the real tokenizer's ids must fit; only the hidden size is small), the image geometry the processor relies
on (patch, merge, image size, tokens per image) and the layer pattern (sliding/full attention, DeepStack layers).

What the folder is is read from its files (`model_type`, the processor and tokenizer files), not from a list of names;
a folder transformers cannot build as an image-text model is refused in one line, as is a missing file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mmrl.errors import UserError

LIKE_MARKER = "mmrl_tiny.json"
# The folder's interface files, copied unchanged (weights, README and the model config are not).
INTERFACE_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
    "processor_config.json", "video_preprocessor_config.json", "generation_config.json",
)
# Shrunk dimensions: small enough that a test builds and runs each family in seconds on a CPU.
TEXT_HIDDEN, TEXT_HEADS, TEXT_KV_HEADS, TEXT_LAYERS, TEXT_INTERMEDIATE = 64, 2, 1, 2, 128
VISION_HIDDEN, VISION_HEADS, VISION_LAYERS, VISION_INTERMEDIATE = 32, 2, 2, 64


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable as JSON ({err})") from None


def check_folder(like: Path) -> None:
    """One line for the first thing the folder lacks: a config, a tokenizer, an image processor, a chat template."""
    if not like.is_dir():
        raise UserError(f"--like {like}: no such directory")
    if not (like / "config.json").is_file():
        raise UserError(f"--like {like}: config.json is missing (the model's architecture and token ids)")
    names = {p.name for p in like.iterdir()}
    if not ({"tokenizer.json", "tokenizer.model"} & names or {"vocab.json", "merges.txt"} <= names):
        raise UserError(f"--like {like}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json + merges.txt)")
    if "tokenizer_config.json" not in names and "tokenizer.json" not in names:
        raise UserError(f"--like {like}: tokenizer_config.json is missing (the tokenizer's special tokens)")
    if "preprocessor_config.json" not in names:
        raise UserError(f"--like {like}: preprocessor_config.json is missing (the image processor's settings)")
    from mmrl.models.processor import folder_chat_template

    has_template = bool(folder_chat_template(str(like))) or (
        "tokenizer_config.json" in names and _read_json(like / "tokenizer_config.json").get("chat_template"))
    if not has_template:
        raise UserError(f"--like {like}: no chat template (chat_template.json, chat_template.jinja or "
                        "tokenizer_config.json's chat_template); a model without one is not a chat model")


# What a build writes (a rebuild into the same OUT removes these first, so no file of another family is left).
WRITTEN = (*INTERFACE_FILES, "config.json", "model.safetensors", LIKE_MARKER)


def check_out(out: Path, like: Path) -> None:
    """OUT must not be the model folder itself (its config and weights would be overwritten) nor a non-empty folder
    that is not an earlier tiny build (its weights would be replaced, stale files kept beside the new ones)."""
    if out.exists() and out.resolve() == like.resolve():
        raise UserError(f"OUT_DIR {out} is the --like folder itself; its config.json and weights would be "
                        "overwritten: give a new directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / LIKE_MARKER).is_file():
            raise UserError(f"OUT_DIR {out} is not empty and holds no earlier tiny build ({LIKE_MARKER}); give a "
                            "new or empty directory")
        remove_earlier_build(out)


def remove_earlier_build(out: Path) -> None:
    """Remove what a tiny build wrote into `out` (interface files, config, weights, marker), nothing else."""
    for name in WRITTEN:
        (out / name).unlink(missing_ok=True)


def _load_config(like: Path):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = _read_json(like / "config.json").get("model_type")
    if not model_type:
        raise UserError(f"--like {like}: config.json names no model_type")
    try:
        config = AutoConfig.from_pretrained(like)
    except (ValueError, KeyError) as err:
        raise UserError(f"--like {like}: model_type '{model_type}' is not one this transformers can build "
                        f"({str(err).splitlines()[0][:120]})") from None
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or not hasattr(config, "vision_config"):
        raise UserError(f"--like {like}: model_type '{model_type}' is not an image-text-to-text model; "
                        "mmrl trains vision-language models")
    return config


def _resection(section: list[int], total: int) -> list[int]:
    """Rescale an M-RoPE section (frequencies per time/height/width axis) to `total`, largest remainders first."""
    exact = [s * total / sum(section) for s in section]
    out = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: out[i] - exact[i])[: total - sum(out)]:
        out[i] += 1
    return out


def _keep_pattern(types: list[str], n: int) -> list[str]:
    """The first n layer types, with every kind of layer the model has still present (Gemma3's full-attention layer
    comes after five sliding ones: two layers cut from the front would all slide)."""
    kept = list(types[:n])
    for kind in dict.fromkeys(types):
        if kind not in kept:
            kept[-1] = kind
    return kept


def _shrink_text(text: Any) -> None:
    text.hidden_size, text.intermediate_size = TEXT_HIDDEN, TEXT_INTERMEDIATE
    text.num_attention_heads = TEXT_HEADS
    if hasattr(text, "num_key_value_heads"):
        text.num_key_value_heads = TEXT_KV_HEADS
    head_dim = TEXT_HIDDEN // TEXT_HEADS
    if getattr(text, "head_dim", None) is not None:
        text.head_dim = head_dim
    if getattr(text, "query_pre_attn_scalar", None) is not None:  # Gemma scales attention by it, not head_dim
        text.query_pre_attn_scalar = head_dim
    text.num_hidden_layers = TEXT_LAYERS
    if getattr(text, "layer_types", None):
        text.layer_types = _keep_pattern(list(text.layer_types), TEXT_LAYERS)
    if getattr(text, "max_window_layers", None) is not None:
        text.max_window_layers = min(text.max_window_layers, TEXT_LAYERS)
    rope = getattr(text, "rope_parameters", None) or {}
    for params in [rope, *(v for v in rope.values() if isinstance(v, dict))]:
        if params.get("mrope_section"):
            params["mrope_section"] = _resection(params["mrope_section"], head_dim // 2)


def _shrink_vision(vision: Any, text_hidden: int) -> None:
    if hasattr(vision, "embed_dim"):  # Qwen2-VL: embed_dim is the tower's width, hidden_size its output (the LM's)
        vision.embed_dim, vision.hidden_size = VISION_HIDDEN, text_hidden
    else:
        vision.hidden_size = VISION_HIDDEN
    if getattr(vision, "intermediate_size", None) is not None:
        vision.intermediate_size = VISION_INTERMEDIATE
    if getattr(vision, "out_hidden_size", None) is not None:
        vision.out_hidden_size = text_hidden
    for heads in ("num_heads", "num_attention_heads"):
        if getattr(vision, heads, None) is not None:
            setattr(vision, heads, VISION_HEADS)
    for depth in ("depth", "num_hidden_layers"):
        old = getattr(vision, depth, None)
        if old is None:
            continue
        setattr(vision, depth, VISION_LAYERS)
        # Layer indexes (Qwen2.5-VL's full-attention blocks, Qwen3-VL's DeepStack taps) keep their relative place.
        for attr in ("fullatt_block_indexes", "deepstack_visual_indexes"):
            if getattr(vision, attr, None):
                setattr(vision, attr, sorted({i * VISION_LAYERS // old for i in getattr(vision, attr)}))


def shrink_config(config: Any) -> Any:
    """The same architecture, token ids, vocabulary and image geometry; small widths and depths."""
    text = config.get_text_config()
    _shrink_text(text)
    _shrink_vision(config.vision_config, text.hidden_size)
    for sub in ("perceiver_config", "audio_config"):  # not in the image path of the supported families; keep small
        if getattr(config, sub, None) is not None and hasattr(getattr(config, sub), "hidden_size"):
            getattr(config, sub).hidden_size = TEXT_HIDDEN
    return config


def _copy_interface(like: Path, out: Path) -> list[str]:
    copied = []
    for name in INTERFACE_FILES:
        if (like / name).is_file():
            shutil.copyfile(like / name, out / name)
            copied.append(name)
    return copied


def build_like(out_dir: str | os.PathLike, like_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny random-weight copy of the model in `like_dir` into `out_dir`; return the path."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

    like, out = Path(like_dir), Path(out_dir)
    check_folder(like)
    check_out(out, like)
    config = shrink_config(_load_config(like))
    out.mkdir(parents=True, exist_ok=True)
    copied = _copy_interface(like, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(like)
    except Exception as err:  # noqa: BLE001 - any tokenizer file transformers cannot read is the folder's fault
        raise UserError(f"--like {like}: its tokenizer does not load ({str(err).splitlines()[0][:160]})") from None
    if "tokenizer.json" not in copied and getattr(tokenizer, "is_fast", False):
        # The fast tokenizer converted from vocab.json + merges.txt, saved so every later load skips the conversion.
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    if len(tokenizer) > config.get_text_config().vocab_size:
        raise UserError(f"--like {like}: the tokenizer has {len(tokenizer)} tokens, more than the config's "
                        f"vocab_size {config.get_text_config().vocab_size}")
    _check_image_token(like, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
        _draw_zero_projections(model)
    model = model.to(torch.float32).eval()
    if (like / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(like)
    model.save_pretrained(out)
    if (like / "generation_config.json").is_file():
        shutil.copyfile(like / "generation_config.json", out / "generation_config.json")  # unchanged, as shipped
    n_params = sum(p.numel() for p in model.parameters())
    (out / LIKE_MARKER).write_text(json.dumps({"like": str(like.resolve()), "model_type": config.model_type,
                                               "seed": seed, "parameters": n_params, "copied": copied}, indent=2))
    return out


def _check_image_token(like: Path, config: Any) -> None:
    """The token the processor writes for an image must be one the config's model takes as an image token: a folder
    whose config names another id built a model whose first forward with an image raised (features and tokens do not
    match)."""
    from mmrl.models.processor import load_processor
    from mmrl.models.tokens import PLACEHOLDER_ATTRS

    processor = load_processor(str(like))
    token = getattr(processor, "image_token", None)
    written = processor.tokenizer.convert_tokens_to_ids(token) if isinstance(token, str) else None
    declared = {getattr(config, a) for a in PLACEHOLDER_ATTRS if isinstance(getattr(config, a, None), int)}
    if isinstance(written, int) and declared and written not in declared:
        raise UserError(f"--like {like}: the processor writes {token} (id {written}) for an image, but config.json's "
                        f"image token ids are {sorted(declared)}; the tokenizer and the config are not the same model's")


def _draw_zero_projections(model: Any) -> None:
    """Gemma3 initialises its image projection to zeros (a checkpoint overwrites it): with random weights no image
    information and no gradient would reach the vision tower, so draw it like the other projections."""
    projector = getattr(getattr(model, "model", None), "multi_modal_projector", None)
    weight = getattr(projector, "mm_input_projection_weight", None)
    if weight is not None:
        with torch.no_grad():
            weight.normal_(0.0, 0.02)
