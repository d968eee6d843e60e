"""Load a policy and its processor from a local path, a hub id, or the embedded tiny presets.

The same code path serves the tiny CPU model and a 7B checkpoint on GPUs: `tiny`/`small` only resolve to a directory.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmrl.config.model import ModelConfig
from mmrl.errors import UserError
from mmrl.models.hub import local_files_only
from mmrl.models.placement import set_compute_dtype
from mmrl.models.processor import load_processor
from mmrl.models.tiny import PRESETS, ensure_tiny_model

VISION_PREFIXES = ("visual", "model.visual", "vision_tower", "model.vision_tower", "vision_model")


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    path: str


def resolve_model_path(name_or_path: str, seed: int = 0) -> str:
    """`tiny`/`small` (or any preset) -> its cached build; a local directory -> itself; else a hub id as given."""
    if name_or_path in PRESETS:
        return str(ensure_tiny_model(name_or_path, seed=seed))
    local = Path(name_or_path).expanduser()
    if local.exists():
        if (local / "adapter_config.json").is_file():
            return str(local)  # a LoRA checkpoint: load_policy puts it on its base model
        if not (local / "config.json").is_file():
            raise UserError(f"model.name_or_path: '{name_or_path}' has no config.json; point it at a model directory")
        return str(local)
    if "/" not in name_or_path:  # hub ids are owner/name: a bare word near a preset is a typo of it
        import difflib

        near = difflib.get_close_matches(name_or_path, list(PRESETS), n=1, cutoff=0.6)
        if near:
            raise UserError(f"model.name_or_path: '{name_or_path}' is neither a directory nor a preset; did you mean "
                            f"the preset '{near[0]}'? (presets: {', '.join(PRESETS)})")
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise UserError(f"model.name_or_path: '{name_or_path}' does not exist; give a model directory, a hub id, "
                        f"or one of the presets {', '.join(PRESETS)}")
    return name_or_path


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype `model.dtype` names ('auto': bf16 on a CUDA device that supports it, else fp32)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def weights_dtype(compute: torch.dtype, trains_weights: bool) -> torch.dtype:
    """Weights the optimizer steps stay float32 (bf16 compute runs under autocast); weights it never steps (inference,
    or the frozen base under LoRA, whose adapters peft keeps in float32) are held in `compute`."""
    return torch.float32 if trains_weights else compute


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing, through whichever name this transformers version supports."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5.2x: the older name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def pick_attn_implementation(name: str, device: torch.device, compute: torch.dtype = torch.bfloat16) -> str:
    """'auto' -> flash_attention_2 when flash-attn is importable, the device is CUDA and compute is bf16, else SDPA."""
    if name != "auto":
        if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise UserError("model.attn_implementation: flash_attention_2 needs flash-attn (pip install 'mmrl[gpu]'); "
                            "or use auto/sdpa")
        return name
    if device.type == "cuda" and compute != torch.float32 and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def vision_parameter_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if any(n.startswith(p) or f".{p}." in f".{n}" for p in VISION_PREFIXES)]


def freeze_vision(model: torch.nn.Module) -> int:
    """Freeze the vision tower (and its merger); return how many tensors were frozen."""
    names = set(vision_parameter_names(model))
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(False)
    return len(names)


def all_linear_targets(model: torch.nn.Module, include_vision: bool) -> list[str] | str:
    """peft `target_modules` that select exactly the linear layers 'all-linear' means: every `nn.Linear` but
    `lm_head`, and none of the vision tower (merger included) unless `include_vision`.

    peft matches a list key against a module name by equality or dotted suffix, so a bare last component can also
    select a module that is no linear layer (the merger's `mlp.0` vs the vision block `blocks.0`). Each layer gets the
    shortest dotted suffix of its name that selects only wanted layers; where even the full name would select another
    module (one name a dotted suffix of another), a regex of the exact names is returned instead.
    """
    import re

    vision = set(vision_parameter_names(model))
    wanted = {
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] != "lm_head"
        and (include_vision or f"{name}.weight" not in vision)
    }
    selects: dict[str, set[str]] = {}  # dotted suffix -> every module name it selects
    for name, _ in model.named_modules():
        parts = name.split(".")
        for i in range(len(parts)):
            selects.setdefault(".".join(parts[i:]), set()).add(name)
    keys: set[str] = set()
    for name in wanted:
        parts = name.split(".")
        suffixes = (".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1))  # shortest first
        key = next((s for s in suffixes if selects[s] <= wanted), None)
        if key is None:
            return "(" + "|".join(re.escape(n) for n in sorted(wanted)) + ")"  # peft full-matches a str target
        keys.add(key)
    return sorted(keys)


def apply_lora(model: torch.nn.Module, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    if lora.target_modules == "all-linear":
        target_modules: Any = all_linear_targets(model, lora.include_vision)
    else:
        target_modules = lora.target_modules
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def load_policy(cfg: ModelConfig, device: torch.device | str | None = None, for_training: bool = True,
                _frozen_base: bool = False) -> LoadedModel:
    """Load model + processor as `cfg` says (dtype, attention, freezing, LoRA, gradient checkpointing)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    device = torch.device(device) if device is not None else torch.device("cpu")
    path = resolve_model_path(cfg.name_or_path, seed=cfg.seed)
    adapter = adapter_base(path)
    if adapter is not None:
        return _load_adapter_checkpoint(cfg, path, adapter, device, for_training)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    cache_only = {"local_files_only": True} if local_files_only(path) else {}  # no network: fail fast or use the cache
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **cache_only)
    except OSError as err:
        hint = " (HF_HUB_OFFLINE=1 is set: only local paths and cached ids work)" if offline else ""
        raise UserError(f"model.name_or_path: cannot load '{cfg.name_or_path}'{hint}: {str(err).splitlines()[0]}") from None
    except ValueError as err:
        raise UserError(f"model.name_or_path: '{cfg.name_or_path}' has an unknown architecture "
                        f"({str(err).splitlines()[0]}); set model.trust_remote_code=true if it ships its own code") from None
    compute = pick_dtype(cfg.dtype, device)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            dtype=weights_dtype(compute, for_training and not cfg.lora.enabled and not _frozen_base),
            attn_implementation=pick_attn_implementation(cfg.attn_implementation, device, compute),
            trust_remote_code=cfg.trust_remote_code,
            **cache_only,
            # the Auto class looks for a PEFT adapter with these alone (without them it asks the hub, with retries)
            **({"adapter_kwargs": dict(cache_only)} if cache_only else {}),
        )
    except ValueError as err:
        raise UserError(f"model.name_or_path: '{cfg.name_or_path}' ({config.model_type}) is not an image-text-to-text "
                        f"model transformers knows: {str(err).splitlines()[0]}") from None
    processor = load_processor(path, trust_remote_code=cfg.trust_remote_code, **cache_only)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    processor.tokenizer.padding_side = "left"
    if cfg.freeze_vision_tower:
        freeze_vision(model)
    if for_training and cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    model.to(device)
    set_compute_dtype(model, compute)
    return LoadedModel(model=model, processor=processor, path=path)


def adapter_base(path: str) -> str | None:
    """The base model of a LoRA checkpoint directory (None when `path` is a full model)."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    import json

    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config}: no base_model_name_or_path; cannot tell which model this LoRA adapter belongs to")
    return base


def _load_adapter_checkpoint(cfg: ModelConfig, path: str, base: str, device: torch.device,
                             for_training: bool) -> LoadedModel:
    """Base model + the saved adapter (trainable when `model.lora.enabled`, so LoRA training continues)."""
    from peft import PeftModel

    base_cfg = cfg.model_copy(update={"name_or_path": base, "lora": cfg.lora.model_copy(update={"enabled": False})})
    loaded = load_policy(base_cfg, device=device, for_training=for_training,
                         _frozen_base=cfg.lora.enabled and for_training)
    model = PeftModel.from_pretrained(loaded.model, path, is_trainable=cfg.lora.enabled and for_training)
    processor = load_processor(path) if (Path(path) / "tokenizer_config.json").is_file() else loaded.processor
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    processor.tokenizer.padding_side = "left"
    return LoadedModel(model=model.to(device), processor=processor, path=path)
