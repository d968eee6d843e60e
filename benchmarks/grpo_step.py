"""One whole GRPO step through mmrl's trainer on a big-architecture preset: does it fit, and what does it cost?

    python3 benchmarks/grpo_step.py                                  # qwen2.5-vl-3b (random weights), bf16, CUDA
    python3 benchmarks/grpo_step.py --preset tiny --device cpu       # the same program, rehearsed on a CPU

The preset's model (random weights) is drawn on the device and saved in bf16 into a work folder, with synthetic
colour questions (one image each); then `GRPOLoop` runs exactly one step from that folder as `mmrl train` would:
the policy loaded in fp32 with bf16 autocast (`model.dtype: bf16`), gradient checkpointing on, a frozen KL
reference (`algorithm.beta` > 0: a second, bf16 copy of the matmul weights), AdamW (its state allocated at this
first step), the rollout by the shared-prefix sampler, a reward that varies within every group
(benchmarks/letters_reward.py: the policy loss has a gradient), and the optimizer step. No checkpoint is written.

Printed: the seconds of each phase (building the model, loading it into the trainer, the step and its rollout and
update), the step's peak GPU memory (allocated and reserved) against the device's total, the loss, KL and gradient
norm, whether the weights moved, and `static_estimate_gib` (weights, gradients, AdamW moments and the reference,
which the step holds whatever its sizes). An out-of-memory error is a result, not a crash: `fits` is false and the
peak reached is reported (exit 1): full-precision AdamW is what mmrl trains with, so a 3B step that does not fit an
H100's 80 GB is rerun on the H200 kind rather than with another optimizer. The last line is one JSON object; exit 0 when the step ran and moved the weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 2)


def static_estimate_gib(model: torch.nn.Module, reference: object) -> float:
    """What the step holds whatever its sizes: the trainable weights, their gradients and AdamW's two moments (4 x the
    weights' bytes: all fp32 under `model.dtype: bf16`), the frozen weights, and the reference's own tensors. At 3B
    this is ~64 GiB of an H100's 79: the rest (autocast's bf16 weight copies, activations, the rollout's KV cache)
    decides whether the step fits; when it does not, the step needs the H200 (141 GB)."""
    seen: set[int] = set()

    def size(params, factor: int) -> int:
        total = 0
        for p in params:
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size() * factor
        return total

    held = size([p for p in model.parameters() if p.requires_grad], 4)
    held += size([p for p in model.parameters() if not p.requires_grad], 1)
    ref_model = getattr(reference, "model", None)
    if isinstance(ref_model, torch.nn.Module):
        held += size(list(ref_model.parameters()), 1)
    return gib(held)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="qwen2.5-vl-3b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (one image each)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (> 0: a frozen reference is kept)")
    parser.add_argument("--work-dir", type=Path, default=None, help="model, data and run folder (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object here")
    args = parser.parse_args(argv)
    if min(args.prompts, args.group_size, args.max_new_tokens) < 1 or args.group_size < 2 or args.beta <= 0:
        print("grpo_step: --prompts and --max-new-tokens must be >= 1, --group-size >= 2 and --beta > 0 (got "
              f"{args.prompts}, {args.max_new_tokens}, {args.group_size}, {args.beta})")
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("grpo_step: no CUDA device visible (torch.cuda.is_available() is False)")
        return 1
    if args.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="mmrl-grpo-step-") as tmp:
            return run(args, device, Path(tmp))
    return run(args, device, args.work_dir)


def run(args: argparse.Namespace, device: torch.device, work: Path) -> int:
    from data_pipelines.synthetic import build_synthetic
    from mmrl.models.tiny import build_tiny_model
    from mmrl.preflight import load_config
    from mmrl.rl.trainer import GRPOLoop
    from mmrl.runs.logger import read_metrics

    cuda = device.type == "cuda"
    figures: dict = {"preset": args.preset, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                     "prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
                     "image_side": args.image_side, "beta": args.beta, "gradient_checkpointing": True,
                     "optimizer": "AdamW", "fits": None, "weights_moved": None}
    if cuda:
        figures["device_memory_gib"] = gib(torch.cuda.get_device_properties(device).total_memory)

    start = time.perf_counter()
    model_dir = build_tiny_model(work / "model", preset=args.preset, init_device=device, save_dtype=torch.bfloat16)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()  # the drawn weights are saved: give their memory back before the trainer loads
    data = build_synthetic(["color"], args.prompts, 0, work / "data", forms=["open"], image_size=args.image_side)
    figures["build_s"] = round(time.perf_counter() - start, 2)

    reward = f"{Path(__file__).resolve().parent / 'letters_reward.py'}:letters"
    pixels = args.image_side * args.image_side
    overrides = {
        "model.name_or_path": str(model_dir), "model.dtype": "bf16", "model.gradient_checkpointing": "true",
        "data.train": str(data), "data.min_pixels": pixels, "data.max_pixels": pixels,
        "rollout.group_size": args.group_size, "rollout.max_completion_length": args.max_new_tokens,
        "algorithm.beta": args.beta, "rewards": f"[{{name: '{reward}', timeout_s: 60}}]",
        "trainer.device": device.type, "trainer.output_dir": str(work / "run"), "trainer.max_steps": 1,
        "trainer.prompts_per_step": args.prompts, "trainer.save_steps": 0, "trainer.save_final": "false",
        "trainer.sample_steps": 0, "trainer.report_to": "[jsonl]", "trainer.progress": "false",
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    status = 1
    phase = "load"  # where an out-of-memory error struck: loading (policy, reference) or the step
    try:
        start = time.perf_counter()
        trainer = GRPOLoop(cfg)
        figures["load_s"] = round(time.perf_counter() - start, 2)
        model = trainer.run.model
        figures["parameters"] = sum(p.numel() for p in model.parameters())
        figures["static_estimate_gib"] = static_estimate_gib(model, trainer.reference)
        # One matmul weight of the last text layer, to see the optimizer step move the weights.
        probe = next(p for n, p in reversed(list(model.named_parameters())) if p.ndim == 2 and "visual" not in n)
        before = probe.detach().float().cpu().clone()
        if cuda:
            figures["loaded_memory_gib"] = gib(torch.cuda.memory_allocated(device))
        start = time.perf_counter()
        phase = "step"
        trainer.train()
        figures["step_s"] = round(time.perf_counter() - start, 2)
        figures["weights_moved"] = not torch.equal(before, probe.detach().float().cpu())
        figures["fits"] = True
        (row,) = read_metrics(trainer.run_dir)
        for key in ("loss", "kl", "grad_norm", "time/rollout", "time/update", "completion_tokens", "tokens_per_s"):
            if key in row:
                figures[key.replace("time/", "") + ("_s" if key.startswith("time/") else "")] = row[key]
        finite = all(math.isfinite(float(figures.get(k, 0.0))) for k in ("loss", "grad_norm"))
        status = 0 if figures["weights_moved"] and finite and figures.get("grad_norm", 0) > 0 else 1
    except torch.OutOfMemoryError as err:
        figures["fits"] = False
        figures["error"] = f"out of memory during the {phase}: {str(err).strip().splitlines()[0]}"
    finally:
        if cuda:
            figures["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated(device))
            figures["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved(device))
    print(f"grpo_step: {args.preset} on {figures['device']}: build {figures['build_s']} s, load "
          f"{figures.get('load_s', '-')} s, step {figures.get('step_s', '-')} s (rollout {figures.get('rollout_s', '-')}"
          f" s, update {figures.get('update_s', '-')} s); fits: {figures['fits']}; peak memory "
          f"{figures.get('peak_allocated_gib', '-')} GiB allocated, {figures.get('peak_reserved_gib', '-')} GiB reserved"
          f" of {figures.get('device_memory_gib', '-')}; loss {figures.get('loss', '-')}, grad norm "
          f"{figures.get('grad_norm', '-')}, weights moved: {figures['weights_moved']}")
    line = json.dumps(figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")
    print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
