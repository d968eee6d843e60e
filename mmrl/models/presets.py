"""Size presets of the embedded model (no torch import: the CLI lists them in --help cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TinyPreset:
    """Dimensions of one preset. `vocab_size` applies to presets with their own tokenizer."""

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
    # Published dimensions of Qwen2.5-VL-3B / -7B (random weights, Qwen's vocabulary size): GPU throughput benchmarks.
    "qwen2.5-vl-3b": TinyPreset(
        text_hidden=2048, text_layers=36, text_heads=16, text_kv_heads=2, text_intermediate=11008,
        vision_hidden=1280, vision_depth=32, vision_heads=16, vision_intermediate=3420,
        mrope_section=(16, 24, 24), fullatt_block_indexes=(7, 15, 23, 31), vocab_size=151936,
        min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28,
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
