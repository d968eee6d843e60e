"""`model:` — which policy to load and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmrl.config.base import Section


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters instead of the full model (peft).")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout on the LoRA path (SFT only: GRPO switches every dropout off, since it would make the "
        "importance ratio of unchanged weights differ from 1).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer of the language model "
        "(lm_head excluded; with include_vision also every linear layer of the vision blocks and the merger)."
    )
    include_vision: bool = Field(False, description="With 'all-linear', also adapt the vision tower's linear layers, merger included "
                                 "(excluded by default).")


class ModelConfig(Section):
    name_or_path: str = Field(
        "tiny",
        description="Local path or hub id of an image-text-to-text model; a preset name ('tiny', 'small', "
        "'tiny-qwen3-vl', 'tiny-gemma3', ...; `mmrl model build-tiny --help` lists them) builds the embedded offline "
        "model once into the cache (~/.cache/mmrl or $MMRL_CACHE) and reuses it.",
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="The one precision setting. 'bf16' = mixed precision: for training the weights and optimizer state "
        "stay fp32 (AdamW updates of lr~1e-6 would round away in bf16 weights) and every forward runs under bf16 "
        "autocast; weights never stepped (evaluation-only loads, the frozen base under LoRA) are held in bf16. "
        "'fp32' = fp32 throughout. 'auto' = bf16 on a CUDA device with bf16 support, else fp32. Log-probs, "
        "advantages and losses are fp32 in every mode. (fp16 is not offered: it needs loss scaling.)",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="'auto' = flash_attention_2 when flash-attn is importable, the device is CUDA and dtype is "
        "bf16, else sdpa."
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code from the checkpoint (off by default).")
    freeze_vision_tower: bool = Field(False, description="Keep the vision encoder (and merger) frozen.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    compile: bool = Field(
        False, description="GRPO: run the text decoder layers through torch.compile during the policy update (old "
        "log-probs and the training forward; the rollout stays eager). Meant for GPUs and long runs: compilation takes "
        "seconds to minutes before the first update; on the CPU presets the update ran only 7-15% faster (docs/training.md). Not with gradient_checkpointing (refused).")
    pred_frame: Literal["auto", "pixel", "input_pixel", "norm1000", "norm1"] = Field(
        "auto", description="Frame the model answers boxes and points in. 'auto' = from its config.json model_type "
        "(Qwen2-VL and Qwen3-VL: norm1000, Qwen2.5-VL: input_pixel; other families have none and a run that scores "
        "coordinates asks for this setting). A reward's own pred_frame kwarg wins over it.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA options.")
    seed: int = Field(0, ge=0, description="Seed of the embedded tiny model's weights and tokenizer (tiny/small only).")
