"""Tiny presets beyond Qwen2.5-VL: Qwen3-VL and Gemma3, built offline like `tiny` (own tokenizer, real classes).

Each builder returns (tokenizer, processor, config) for a preset; `mmrl.models.tiny.build_tiny_model` saves them with
random weights of the real `*ForConditionalGeneration` class, so `from_pretrained`/`AutoProcessor` load them like
any checkpoint. No torchvision is needed: images go through the PIL image processors.

- Qwen3-VL: patch size 16 (images are resized to multiples of 32), interleaved M-RoPE, DeepStack visual features
  added to the first decoder layers. Same chat and vision tokens as Qwen2.5-VL.
- Gemma3: a SigLIP tower on fixed-size images pooled to `mm_tokens_per_image` soft tokens, bidirectional attention
  over image tokens (`token_type_ids`), sliding-window layers, Gemma's turn tokens.
"""

from __future__ import annotations

from typing import Any

from mmrl.models.presets import TinyPreset
from mmrl.models.processor import _allow_missing_video_processor

GEMMA3_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                         "<end_of_image>", "<image_soft_token>"]

# Gemma's turn format (the assistant role is called "model"), without a default system prompt. The image slot is
# `<start_of_image>`; the processor expands it to `\n\n<start_of_image>` + soft tokens + `<end_of_image>\n\n`.
GEMMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>{% endgeneration %}\n"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_qwen3_vl(preset: TinyPreset, tokenizer: Any) -> tuple[Any, Any]:
    """(processor, config) of a tiny Qwen3-VL on the Qwen-style tokenizer."""
    from transformers import Qwen3VLConfig, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=preset.min_pixels, max_pixels=preset.max_pixels, patch_size=preset.patch_size, merge_size=2,
        temporal_patch_size=2, size={"shortest_edge": preset.min_pixels, "longest_edge": preset.max_pixels},
    )
    with _allow_missing_video_processor():
        processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                     chat_template=tokenizer.chat_template)  # Qwen's turns, as Qwen2.5-VL
    ids = tokenizer.convert_tokens_to_ids
    head_dim = preset.text_hidden // preset.text_heads
    if sum(preset.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {preset.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    text_config = {
        "vocab_size": len(tokenizer), "hidden_size": preset.text_hidden, "intermediate_size": preset.text_intermediate,
        "num_hidden_layers": preset.text_layers, "num_attention_heads": preset.text_heads,
        "num_key_value_heads": preset.text_kv_heads, "head_dim": head_dim, "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                            "mrope_section": list(preset.mrope_section), "mrope_interleaved": True},
        "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "depth": preset.vision_depth, "hidden_size": preset.vision_hidden,
        "intermediate_size": preset.vision_intermediate, "num_heads": preset.vision_heads,
        "out_hidden_size": preset.text_hidden, "patch_size": preset.patch_size, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "num_position_embeddings": preset.vision_positions,
        "deepstack_visual_indexes": list(preset.deepstack_indexes),
    }
    config = Qwen3VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False,
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    return processor, config


def build_gemma3(preset: TinyPreset, tokenizer: Any) -> tuple[Any, Any]:
    """(processor, config) of a tiny Gemma3 on a Gemma-style tokenizer (see `GEMMA3_SPECIAL_TOKENS`)."""
    from transformers import Gemma3Config, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    side = preset.image_size
    image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=preset.mm_tokens_per_image)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = preset.text_hidden // preset.text_heads
    layers = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(preset.text_layers)]
    text_config = {
        "vocab_size": len(tokenizer), "hidden_size": preset.text_hidden, "intermediate_size": preset.text_intermediate,
        "num_hidden_layers": preset.text_layers, "num_attention_heads": preset.text_heads,
        "num_key_value_heads": preset.text_kv_heads, "head_dim": head_dim, "query_pre_attn_scalar": head_dim,
        "sliding_window": 64, "layer_types": layers, "max_position_embeddings": 32768,
        "pad_token_id": ids("<pad>"), "eos_token_id": ids("<end_of_turn>"), "bos_token_id": ids("<bos>"),
    }
    vision_config = {
        "model_type": "siglip_vision_model", "hidden_size": preset.vision_hidden,
        "intermediate_size": preset.vision_intermediate, "num_hidden_layers": preset.vision_depth,
        "num_attention_heads": preset.vision_heads, "image_size": side, "patch_size": preset.patch_size,
        "vision_use_head": False,
    }
    config = Gemma3Config(
        text_config=text_config, vision_config=vision_config, mm_tokens_per_image=preset.mm_tokens_per_image,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), tie_word_embeddings=True,
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    return processor, config


def gemma3_tokenizer_kwargs() -> dict[str, Any]:
    """How the Gemma3 tokenizer names its tokens (the processor reads boi/eoi/image tokens by these names)."""
    return {
        "eos_token": "<end_of_turn>", "pad_token": "<pad>", "bos_token": "<bos>", "unk_token": None,
        "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                 "image_token": "<image_soft_token>"},
    }


def finish_gemma3_init(model: Any) -> None:
    """Gemma3 initialises its image projection to zeros (a checkpoint overwrites it); random tiny weights would then
    pass no image information and no gradient to the vision tower, so draw it like the other projections."""
    import torch

    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.normal_(0.0, 0.02)
