"""Shared-prefix log-probs and gradients vs the naive per-completion forward, measured on one device.

    python3 benchmarks/prefix_exactness.py --device cuda --preset small   # what scripts/gpu_check.sh runs on a GPU
    python3 benchmarks/prefix_exactness.py --device cpu --preset tiny     # its CPU rehearsal

For each compute dtype (fp32, bf16: fp32 weights under autocast, as `model.dtype` loads them) and activation
checkpointing off and on (`model.gradient_checkpointing`), the policy is loaded as the trainer loads it and put in
train mode without dropout; the G completions of one image prompt are scored by `completion_logprobs` (prompt run
once, its keys shared) and by `naive_completion_logprobs` (G whole sequences, the image encoded G times), and a
weighted sum of each is back-propagated. Measured: the largest |difference| of the log-probs over the completion
tokens, and the relative norm of the gradient difference ||g_shared - g_naive|| / ||g_naive|| over the vision tower's
parameters and over the rest. The two forwards compute the same function in a different order, so fp32 agrees to
rounding and bf16 to bf16 noise: the bf16 figures are the tolerance to expect on this device.

The last line printed is one JSON object (`ok`: every case within the bounds below); exit 1 when a case is not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Bounds the measured differences must stay under. fp32: rounding only (the CPU tests see < 1e-5; a GPU's TF32
# convolutions in the vision patch embedding may add some). bf16: an 8-bit mantissa, ~4e-3 per rounding, compounded
# over the layers; a real mismatch (a wrong position, a missing image feature) moves log-probs by O(1).
BOUNDS = {"fp32": {"logp": 1e-3, "grad": 1e-3}, "bf16": {"logp": 0.1, "grad": 0.05}}


def image_prompt(processor, side: int, seed: int) -> dict:
    import numpy as np
    from PIL import Image

    pixels = (np.random.RandomState(seed).rand(side, side, 3) * 255).astype("uint8")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt"))


def completions(pad_id: int, vocab: int, group: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[G, T] ids and mask with ragged lengths: one full, one short, one of a single token (the padding paths)."""
    ids = torch.randint(0, vocab, (group, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(group, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    mask[2, 1:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def forward_backward(fn, model, prompt, ids, mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logp = fn(model, prompt, ids, mask)
    # Non-uniform weights per token, so a gradient reaching the wrong position does not cancel out.
    weights = torch.linspace(0.5, 1.5, logp.numel(), device=logp.device).view_as(logp)
    (logp * weights).sum().backward()
    return logp.detach(), gradients(model)


def relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]) -> float:
    """||a - b|| / ||b|| over the named tensors (all of them together); NaN when b has no gradient there."""
    diff = sum(float((a[n] - b[n]).pow(2).sum()) for n in names)
    norm = sum(float(b[n].pow(2).sum()) for n in names)
    return (diff / norm) ** 0.5 if norm > 0 else float("nan")


def measure(preset: str, device: torch.device, dtype: str, checkpointing: bool, seed: int) -> dict:
    from mmrl.models.dropout import disable_dropout
    from mmrl.models.loading import load_policy, vision_parameter_names
    from mmrl.models.logprobs import completion_logprobs, naive_completion_logprobs
    from mmrl.models.placement import to_device
    from mmrl.preflight import load_config

    torch.manual_seed(seed)
    overrides = [f"model.name_or_path={preset}", f"model.dtype={dtype}", "model.attn_implementation=sdpa",
                 f"model.gradient_checkpointing={str(checkpointing).lower()}"]
    loaded = load_policy(load_config(None, overrides).model, device=device)
    model, processor = loaded.model, loaded.processor
    model.train()  # as the update runs it: checkpointing applies in train mode only
    disable_dropout(model)
    prompt = to_device(image_prompt(processor, 84, seed), device)
    vocab = min(len(processor.tokenizer), model.config.get_text_config().vocab_size)
    ids, mask = completions(processor.tokenizer.pad_token_id, vocab, group=4, length=12, seed=seed)
    ids, mask = ids.to(device), mask.to(device)
    shared, shared_grads = forward_backward(completion_logprobs, model, prompt, ids, mask)
    naive, naive_grads = forward_backward(naive_completion_logprobs, model, prompt, ids, mask)
    active = mask.bool()
    vision = set(vision_parameter_names(model))
    names = sorted(naive_grads)
    if sorted(shared_grads) != names:
        raise RuntimeError("the shared and naive forwards reached different parameters")
    figures = {
        "dtype": dtype, "checkpointing": checkpointing,
        "logp_max_abs_diff": float((shared[active] - naive[active]).abs().max()),
        "padding_zero": bool((shared[~active] == 0).all()),
        "vision_grad_rel_diff": relative(shared_grads, naive_grads, [n for n in names if n in vision]),
        "text_grad_rel_diff": relative(shared_grads, naive_grads, [n for n in names if n not in vision]),
    }
    bounds = BOUNDS[dtype]
    grads = (figures["vision_grad_rel_diff"], figures["text_grad_rel_diff"])
    figures["ok"] = (figures["logp_max_abs_diff"] < bounds["logp"] and figures["padding_zero"]
                     and all(g < bounds["grad"] for g in grads))  # NaN (no gradient) fails too
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="small", help="a qwen2_5_vl-architecture preset (tiny, small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("prefix_exactness: no CUDA device visible (torch.cuda.is_available() is False)")
        return 1
    start = time.perf_counter()
    cases = [measure(args.preset, device, dtype, ckpt, args.seed) for dtype in ("fp32", "bf16") for ckpt in (False, True)]
    for case in cases:
        print(f"{case['dtype']} checkpointing {'on ' if case['checkpointing'] else 'off'}: max |dlogp| "
              f"{case['logp_max_abs_diff']:.3g}, grad rel diff vision {case['vision_grad_rel_diff']:.3g} "
              f"text {case['text_grad_rel_diff']:.3g} -> {'ok' if case['ok'] else 'OUT OF BOUNDS'}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "preset": args.preset, "bounds": BOUNDS, "cases": cases,
              "bf16_logp_max_abs_diff": max(c["logp_max_abs_diff"] for c in cases if c["dtype"] == "bf16"),
              "fp32_logp_max_abs_diff": max(c["logp_max_abs_diff"] for c in cases if c["dtype"] == "fp32"),
              "ok": all(c["ok"] for c in cases), "seconds": round(time.perf_counter() - start, 2)}
    line = json.dumps(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")
    print(line)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
