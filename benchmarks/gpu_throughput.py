"""GPU throughput of mmrl's own rollout and training forward on a big-architecture preset (random weights).

    python3 benchmarks/gpu_throughput.py                          # qwen2.5-vl-3b, bf16, on the first CUDA device
    python3 benchmarks/gpu_throughput.py --preset qwen2.5-vl-7b --group-size 8 --max-new-tokens 256
    python3 benchmarks/gpu_throughput.py --preset tiny --device cpu --steps 1   # smoke test of the program itself
    python3 benchmarks/gpu_throughput.py --backend vllm            # rollouts by the colocated vLLM engine (`vllm` extra)

The model is built in memory from the preset (no download, no checkpoint written) and run through the code a
training step runs: `make_backend(...).rollout` (shared-prefix rollout) and `completion_logprobs` + backward (the
training forward), with `model.dtype` semantics (fp32 weights + bf16 autocast by default). Printed per phase:
tokens/s, peak GPU memory, MFU = useful FLOPs / s over the device's dense bf16 peak (from a table of known devices,
or `--peak-tflops`), and the fraction of the matmul rate measured here (a few large `torch.matmul`s in the compute
dtype on the device: the same figure on a device the table does not know, or on the CPU). Useful FLOPs are counted
from the model config by `benchmarks/flops.py` (matmuls only: the prompt once per group, each completion's
positions, the LM head on the rows that are scored, causal attention, the vision tower once per image); the rollout
is one forward, the training forward + backward 3 × one forward (the vision tower trains here, so it counts 3 × too).
The last line is `train_tokens_per_s=<float>`.

`--backend vllm` samples with `mmrl.generation.vllm_backend.VLLMBackend` as `rollout.backend: vllm` does: each timed
rollout includes the engine's wake-up, the weight sync from the policy and the sleep after (the per-step cost of a
colocated engine). Its prompts are the same images and question as chat prompts; the rollout's peak memory counts
the trainer's allocations only (vLLM allocates from its own pool). It prints `rollout_tokens_per_s=<float>` too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flops import PromptShape, grpo_step_flops, matmul_rate  # noqa: E402

# Dense bf16 peak (no sparsity) of common training GPUs, in FLOP/s; the first key found in the device name wins
# (so the PCIe and NVL H100s, slower than the SXM one, come first).
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "L40": 181e12, "A10": 125e12, "L4": 121e12, "4090": 165e12, "B200": 2250e12}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def peak_for_name(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the device called `name` (as torch.cuda.get_device_name says), None if unknown."""
    return next((value for key, value in PEAK_BF16.items() if key in name), None)


def flops_parameters(model: torch.nn.Module) -> int:
    """Parameters every text token multiplies: all but the vision tower and an untied input embedding (a lookup; a
    tied one is the LM head's matmul and counts once)."""
    from mmrl.models.loading import vision_parameter_names

    vision = set(vision_parameter_names(model))
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is embedding
    return sum(p.numel() for n, p in model.named_parameters()
               if n not in vision and (p is not embedding or tied))


def build(preset: str, device: torch.device, dtype: str, attn: str, seed: int):
    """Tokenizer, processor and a randomly initialised model of `preset`, created directly on `device`."""
    from transformers import AutoModelForImageTextToText

    from mmrl.models.loading import pick_attn_implementation, pick_dtype, weights_dtype
    from mmrl.models.placement import set_compute_dtype
    from mmrl.models.tiny import PRESETS, build_parts

    _tokenizer, processor, config, _eos, _pad = build_parts(PRESETS[preset], seed)
    compute = pick_dtype(dtype, device)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=weights_dtype(compute, trains_weights=True),
            attn_implementation=pick_attn_implementation(attn, device, compute))
    set_compute_dtype(model, compute)
    processor.tokenizer.padding_side = "left"
    return model, processor, compute


QUESTION = "How many shapes are there? Think first."


def make_images(count: int, side: int, seed: int) -> list:
    from PIL import Image

    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(side, side, 3) * 255).astype("uint8")) for _ in range(count)]


def make_prompts(processor, count: int, side: int, seed: int) -> list[dict]:
    prompts = []
    for image in make_images(count, side, seed):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(dict(processor(text=[text], images=[image], return_tensors="pt")))
    return prompts


def make_rollout_backend(args, model, processor, prompt_tokens: int):
    """(backend, the prompts its rollout takes): HF takes the encoded prompts, vLLM chat prompts with the images."""
    from mmrl.generation.backends import make_backend

    if args.backend == "hf":
        return make_backend(model, processor), None
    from mmrl.config.data import DataConfig
    from mmrl.generation import Prompt
    from mmrl.generation.vllm_backend import VLLMBackend

    side = args.image_side * args.image_side
    data_cfg = DataConfig(min_pixels=min(side, 3136), max_pixels=side)  # the image keeps its size, as on the HF path
    engine = VLLMBackend(model, processor, data_cfg, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                         max_model_len=2 * prompt_tokens + args.max_new_tokens + 256, seed=args.seed)
    images = make_images(args.prompts, args.image_side, args.seed)
    return engine, [Prompt.from_question(QUESTION, images=[image]) for image in images]


def si(value: float, unit: str) -> str:
    """`value` with a k/M/G/T prefix (a 1M-parameter smoke model and a 3B one both read well)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def with_index(device: torch.device, current: int) -> torch.device:
    """`--device cuda` names no device index, and `torch.cuda.set_device` refuses such a device (ValueError): a
    CUDA device without an index is the current one, `current`."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", current)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from mmrl.models.presets import PRESETS

    parser.add_argument("--preset", default="qwen2.5-vl-3b",  # the architecture the FLOP counter knows
                        choices=[name for name, spec in PRESETS.items() if spec.arch == "qwen2_5_vl"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "auto"])
    parser.add_argument("--attn", default="auto", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (one image each)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s if the device is unknown")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                        help="rollout backend: hf (shared-prefix sampler) or vllm (colocated engine, the vllm extra)")
    parser.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3,
                        help="--backend vllm: the engine's share of GPU memory (rollout.vllm_gpu_memory_utilization)")
    args = parser.parse_args(argv)
    if min(args.steps, args.prompts, args.group_size, args.max_new_tokens) < 1 or args.image_side % 28:
        print("gpu_throughput: --steps, --prompts, --group-size and --max-new-tokens must be >= 1 and --image-side a "
              f"multiple of 28 (got {args.steps}, {args.prompts}, {args.group_size}, {args.max_new_tokens}, "
              f"{args.image_side})")
        return 2

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device visible; nothing to measure")
        return 0
    if device.type == "cuda":
        device = with_index(device, torch.cuda.current_device())
        torch.cuda.set_device(device)
    from mmrl.errors import UserError

    if args.backend == "vllm":
        from mmrl.generation.vllm_backend import require_vllm

        try:
            require_vllm()  # before the model is built: a missing extra or CUDA device is one line
        except UserError as err:
            print(f"gpu_throughput: {err}")
            return 2
    from mmrl.generation import SamplingParams
    from mmrl.models.logprobs import completion_logprobs
    from mmrl.models.placement import to_device

    try:
        model, processor, compute = build(args.preset, device, args.dtype, args.attn, args.seed)
    except UserError as err:  # e.g. --attn flash_attention_2 without flash-attn
        print(f"gpu_throughput: {err}")
        return 2
    n_params = sum(p.numel() for p in model.parameters())
    n_flops = flops_parameters(model)
    prompts = [to_device(p, device) for p in make_prompts(processor, args.prompts, args.image_side, args.seed)]
    prompt_tokens = sum(int(p["input_ids"].shape[1]) for p in prompts)
    backend, chat_prompts = make_rollout_backend(args, model, processor, prompt_tokens // max(1, args.prompts))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    g, length = args.group_size, args.max_new_tokens
    peak = peak_flops(device, args.peak_tflops)
    matmul = matmul_rate(device, compute)
    shapes = [PromptShape(int(p["input_ids"].shape[1]), tuple(tuple(int(v) for v in row) for row in
                                                             p.get("image_grid_thw", torch.empty(0, 3)).tolist()))
              for p in prompts]
    attn_impl = getattr(model.config, "_attn_implementation", "?")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} | preset {args.preset} | "
          f"{n_params / 1e6:,.1f}M parameters | attention {attn_impl} | weights "
          f"{next(model.parameters()).dtype} compute {compute} | rollout {args.backend} | {args.prompts} prompts x G={g} x {length} tokens, "
          f"{args.image_side}x{args.image_side} images ({prompt_tokens // max(1, args.prompts)} prompt tokens each) | "
          f"peak {si(peak, 'FLOP/s') if peak else 'unknown'}, measured matmul {si(matmul, 'FLOP/s')}")

    def rollout():
        params = SamplingParams(n=g, max_new_tokens=length, min_new_tokens=length, temperature=1.0)
        return backend.rollout(chat_prompts or prompts, params, generator=generator)

    def train(batch):
        model.train()
        for i, prompt in enumerate(prompts):
            rows = slice(i * g, (i + 1) * g)
            logp = completion_logprobs(model, prompt, batch.completion_ids[rows], batch.completion_mask[rows])
            (-(logp.sum() / batch.completion_mask[rows].sum())).backward()
        model.zero_grad(set_to_none=True)

    figures: dict[str, float] = {"parameters": float(n_params), "flops_parameters": float(n_flops)}
    for phase in ("rollout", "train"):
        batch = rollout()  # warm-up (and the completions the training forward scores)
        if phase == "train":
            train(batch)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        tokens, seconds = 0, 0.0
        for _ in range(args.steps):
            if phase == "rollout":
                start = time.perf_counter()
                batch = rollout()
                sync(device)
                seconds += time.perf_counter() - start
                tokens += int(batch.completion_mask.sum())
            else:
                start = time.perf_counter()
                train(batch)
                sync(device)
                seconds += time.perf_counter() - start
                tokens += int(batch.completion_mask.sum())
        # Completions are forced to `length`; should an engine stop one early, count the mean length it produced.
        mean_length = max(1, round(tokens / (args.steps * len(prompts) * g)))
        step = grpo_step_flops(model.config, shapes, g, mean_length, vision_trainable=True)
        useful = (step.rollout if phase == "rollout" else step.update) * args.steps
        rate = tokens / seconds
        mfu = useful / seconds / peak if peak else float("nan")  # written as null
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        figures.update({f"{phase}_tokens_per_s": rate, f"{phase}_mfu": mfu, f"{phase}_peak_memory_gib": memory,
                        f"{phase}_useful_tflop_per_step": useful / args.steps / 1e12,
                        f"{phase}_fraction_of_matmul": useful / seconds / matmul})
        print(f"{phase:8s} {rate:10.1f} completion tokens/s{'/GPU' if device.type == 'cuda' else ''} | MFU {f'{mfu * 100:.1f}%' if peak else 'n/a (peak unknown)'} | "
              f"{useful / seconds / matmul * 100:.1f}% of measured matmul | {si(useful / args.steps, 'FLOP')} useful "
              f"per step | peak memory {f'{memory:.1f} GiB' if memory is not None else 'n/a (not CUDA)'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: (None if v != v else v) for k, v in figures.items()}, indent=2))  # NaN: null
    if args.backend == "vllm":
        print(f"rollout_tokens_per_s={figures['rollout_tokens_per_s']:.2f} (vllm)")
    print(f"train_tokens_per_s={figures['train_tokens_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
