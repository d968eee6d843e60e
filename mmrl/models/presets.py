"""Size presets of the embedded model (no torch import: the CLI lists them in --help cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TinyPreset:
    """Dimensions of one preset. `vocab_size` applies to presets with their own tokenizer.

    `arch` picks the architecture (qwen2_5_vl, qwen3_vl, gemma3); `patch_size`, `vision_positions` (Qwen3-VL's
    learned position grid, a square) and `deepstack_indexes` (Qwen3-VL), `image_size` and `mm_tokens_per_image`
    (Gemma3's fixed input side and soft tokens per image, a square) apply to the architectures that have them;
    `tie_embeddings` shares the input embedding with the LM head (Qwen2.5-VL-3B does, 7B does not).
    """

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    mrope_section: tuple[int, int, int]
    vocab_size: int = 1024
    min_pixels: int = 28 * 28
    max_pixels: int = 448 * 448
    fullatt_block_indexes: tuple[int, ...] = field(default=())
    description: str = ""
    arch: str = "qwen2_5_vl"
    patch_size: int = 14
    vision_positions: int = 64
    deepstack_indexes: tuple[int, ...] = field(default=())
    image_size: int = 64
    mm_tokens_per_image: int = 4
    tie_embeddings: bool = False


PRESETS: dict[str, TinyPreset] = {
    "tiny": TinyPreset(
        text_hidden=128, text_layers=3, text_heads=4, text_kv_heads=2, text_intermediate=512,
        vision_hidden=64, vision_depth=2, vision_heads=2, vision_intermediate=128,
        mrope_section=(4, 6, 6), fullatt_block_indexes=(1,),
        description="~1.2M parameters, for tests",
    ),
    "small": TinyPreset(
        text_hidden=384, text_layers=8, text_heads=6, text_kv_heads=2, text_intermediate=1536,
        vision_hidden=192, vision_depth=4, vision_heads=3, vision_intermediate=768,
        mrope_section=(8, 12, 12), fullatt_block_indexes=(1, 3),
        description="~20M parameters, for the quickstart",
    ),
    "tiny-qwen3-vl": TinyPreset(
        text_hidden=128, text_layers=3, text_heads=4, text_kv_heads=2, text_intermediate=512,
        vision_hidden=64, vision_depth=2, vision_heads=2, vision_intermediate=128,
        mrope_section=(6, 5, 5), arch="qwen3_vl", patch_size=16, vision_positions=64, deepstack_indexes=(0,),
        min_pixels=32 * 32, max_pixels=448 * 448,
        description="tiny Qwen3-VL (patch 16, interleaved M-RoPE, DeepStack), for tests",
    ),
    "tiny-gemma3": TinyPreset(
        text_hidden=128, text_layers=3, text_heads=4, text_kv_heads=2, text_intermediate=512,
        vision_hidden=64, vision_depth=2, vision_heads=2, vision_intermediate=128,
        mrope_section=(0, 0, 0), arch="gemma3", patch_size=16, image_size=64, mm_tokens_per_image=4,
        description="tiny Gemma3 (SigLIP tower, fixed 64x64 images, 4 soft tokens each), for tests",
    ),
    # Published dimensions of Qwen2.5-VL-3B / -7B (random weights, Qwen's vocabulary size): GPU throughput benchmarks.
    "qwen2.5-vl-3b": TinyPreset(
        text_hidden=2048, text_layers=36, text_heads=16, text_kv_heads=2, text_intermediate=11008,
        vision_hidden=1280, vision_depth=32, vision_heads=16, vision_intermediate=3420,
        mrope_section=(16, 24, 24), fullatt_block_indexes=(7, 15, 23, 31), vocab_size=151936,
        min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28, tie_embeddings=True,
        description="Qwen2.5-VL-3B dimensions, random weights (benchmarks only)",
    ),
    "qwen2.5-vl-7b": TinyPreset(
        text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
        vision_hidden=1280, vision_depth=32, vision_heads=16, vision_intermediate=3420,
        mrope_section=(16, 24, 24), fullatt_block_indexes=(7, 15, 23, 31), vocab_size=152064,
        min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28,
        description="Qwen2.5-VL-7B dimensions, random weights (benchmarks only)",
    ),
}
