"""GRPO throughput: mmrl's trainer against TRL's `GRPOTrainer` (vLLM off), same model, data and settings.

Both trainers run in this process one after the other on the same weights (each loads its own copy from the same
directory), the same image-heavy prompts in the same order (data shuffling off on both sides), the same group size G,
prompts per step, forced completion length (min_new_tokens = max_new_tokens), beta, loss aggregation (DAPO), learning
rate, grad clipping and reward function, with the same number of torch threads. Each runs `--warmup` untimed steps,
then `--steps` timed ones. Printed: samples/s (completions per second of full training steps), a phase breakdown,
structural counters (vision-encoder calls and images encoded per unique image; LM-head rows and language-model token
positions per completion token, from forward hooks on the policy and, when beta > 0, the reference model), the
physical bound (the step's useful FLOPs counted from the model config by `benchmarks/flops.py`, over this machine's
matmul rate measured in the same run: median of short `torch.matmul` timings on the benchmark's device, dtype and
thread count, taken before, between and after the two trainers) and the fraction of it each side reaches, and, as the
last line, `speedup_vs_trl=<mmrl samples/s / TRL samples/s>`.

Timing is conservative for mmrl: its step time is the wall time between the end of the last warm-up step and the end
of the last step (logging included), while TRL's is the sum of its `on_step_begin` -> `on_step_end` intervals (its
dataloader fetch and logging excluded).

    python3 benchmarks/grpo_vs_trl.py                                      # CPU: tiny preset, 448x448, G=8
    python3 benchmarks/grpo_vs_trl.py --freeze-vision-tower                # the frozen-tower row
    python3 benchmarks/grpo_vs_trl.py --rounds 3       # both sides 3 times, alternating order; median ratio last
    python3 benchmarks/grpo_vs_trl.py --preset qwen2.5-vl-3b --device cuda --dtype bf16 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import (  # noqa: E402
    MatmulRates,
    PhaseClock,
    Rounds,
    StructuralCounters,
    bound_fraction,
    samples_per_second,
    step_flops,
    table,
)

REWARD_NAME = "bench_distinct_words"
LEARNING_RATE = 1e-5


def distinct_words(completions: list, **_: Any) -> list[float]:
    """Benchmark reward: distinct whitespace-separated words / 10. Random completions give it spread, so no group
    has all-zero advantages (mmrl skips the forward of such groups; TRL does not, which would flatter mmrl)."""
    out = []
    for completion in completions:
        if isinstance(completion, list):  # TRL: conversational completions are lists of messages
            completion = " ".join(str(m.get("content", "")) for m in completion)
        out.append(len(set(str(completion).split())) / 10.0)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny", help="mmrl model preset (tiny, small, qwen2.5-vl-3b, qwen2.5-vl-7b)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per trainer")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps before timing")
    p.add_argument("--group-size", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="completion length (forced: min = max)")
    p.add_argument("--image-size", type=int, default=448, help="side of the square images (pixels, multiple of 28)")
    p.add_argument("--prompts-per-step", type=int, default=2, help="prompts per optimizer step (x G completions)")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (same on both sides)")
    p.add_argument("--freeze-vision-tower", action="store_true",
                   help="model.freeze_vision_tower=true on both sides (mmrl then encodes each image once per step)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (same for both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["mmrl", "trl"], default=None, help="run one side only (no speedup line)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run both sides this many times, alternating which goes first (a shared machine's load "
                        "drifts); the table pools all rounds, the last line is the median of the rounds' ratios")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
def build_data(args: argparse.Namespace, out_dir: Path) -> Path:
    from data_pipelines.synthetic import build_synthetic

    n = max(16, args.prompts_per_step * (args.steps + args.warmup))
    return Path(build_synthetic(["color"], n, args.seed, out_dir, forms=["open"], image_size=args.image_size))


def mmrl_overrides(args: argparse.Namespace, data_path: Path, out_dir: Path) -> list[str]:
    pixels = args.image_size * args.image_size
    return [
        f"model.name_or_path={args.preset}", f"model.dtype={args.dtype}",
        f"model.freeze_vision_tower={str(args.freeze_vision_tower).lower()}",  # TRL loads the same model config
        f"data.train={data_path}", "data.shuffle=false", "data.min_pixels=784", f"data.max_pixels={pixels}",
        "data.max_prompt_length=100000",
        f"rollout.group_size={args.group_size}", f"rollout.max_completion_length={args.max_new_tokens}",
        f"rollout.min_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0",
        "algorithm.advantage=grpo", "algorithm.loss_aggregation=dapo", f"algorithm.beta={args.beta}",
        f"rewards=[{{name: {REWARD_NAME}, weight: 1.0}}]",
        f"optimizer.lr={LEARNING_RATE}", "optimizer.max_grad_norm=1.0",
        f"trainer.output_dir={out_dir}", f"trainer.max_steps={args.steps + args.warmup}",
        f"trainer.prompts_per_step={args.prompts_per_step}", f"trainer.device={args.device}",
        "trainer.save_steps=0", "trainer.save_final=false", "trainer.sample_steps=0", "trainer.report_to=[jsonl]",
        "trainer.progress=false", f"trainer.seed={args.seed}",
    ]


# ---------------------------------------------------------------------------------------------------------------
# mmrl
# ---------------------------------------------------------------------------------------------------------------
def run_mmrl(args: argparse.Namespace, data_path: Path, work: Path, clock: PhaseClock | None = None) -> dict[str, Any]:
    """mmrl's timed run; `clock` may carry the caller's own wrapped phases (timed from the same step on, returned
    under "clock")."""
    from mmrl.preflight import load_config
    from mmrl.rl.trainer import GRPOLoop

    cfg = load_config(None, mmrl_overrides(args, data_path, work / "mmrl"))
    trainer = GRPOLoop(cfg)
    reference = getattr(trainer.reference, "model", None)  # a separate copy when beta > 0 (full fine-tuning)
    counters = StructuralCounters(trainer.run.model, reference)
    clock = clock or PhaseClock()
    clock.wrap(trainer.backend, "rollout", "generate")
    composite = trainer._composite(tuple(cfg.rewards))  # the instance the loop will use (cached by spec)
    clock.wrap(composite, "score", "rewards")
    steps: list[dict[str, Any]] = []
    marks: list[float] = []
    log = trainer.run.logger.log

    def on_log(step: int, metrics: dict[str, Any]) -> None:
        log(step, metrics)
        if args.device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        steps.append(dict(metrics))
        if step == args.warmup:  # warm-up done: count and time from here
            counters.active = clock.active = True

    trainer.run.logger.log = on_log
    trainer.train()
    counters.close()
    timed = steps[args.warmup:]
    seconds = marks[-1] - marks[args.warmup - 1]  # --warmup >= 1
    completions = args.prompts_per_step * args.group_size * len(timed)
    tokens = sum(m["completion_length/mean"] * args.prompts_per_step * args.group_size for m in timed)
    rollout = sum(m.get("time/rollout", 0.0) for m in timed)
    update = sum(m.get("time/update", 0.0) for m in timed)
    return {
        "seconds": seconds, "completions": completions, "completion_tokens": tokens, "steps": len(timed),
        "phases": {"generate": clock.seconds["generate"], "rewards": clock.seconds["rewards"],
                   "rollout, other": rollout - clock.seconds["generate"] - clock.seconds["rewards"],
                   "update (fwd+bwd+optim)": update, "other": seconds - rollout - update},
        "counts": dict(counters.counts),
        "prompt_tokens": sum(m.get("rollout/prefill_tokens", 0) for m in timed) / (args.prompts_per_step * len(timed)),
        "loss": [m.get("loss") for m in timed],
        "config": trainer.run.model.config,
        "clock": dict(clock.seconds),
    }


# ---------------------------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------------------------
def trl_dataset(args: argparse.Namespace, data_path: Path, processor: Any):
    """The same samples as mmrl sees, as TRL's conversational prompt + `image` column; images prepared (resized) by
    mmrl's own code and the prompt token ids checked identical to mmrl's."""
    from datasets import Dataset
    from trl.data_utils import prepare_multimodal_messages

    from mmrl.data.collate import encode_one
    from mmrl.data.dataset import load_datasets
    from mmrl.data.templates import build_messages
    from mmrl.data.vision import prepare_sample_images
    from mmrl.preflight import load_config

    cfg = load_config(None, mmrl_overrides(args, data_path, Path(tempfile.gettempdir())))
    samples = load_datasets(list(cfg.data.train), cfg.data)
    rows = []
    for sample in samples:
        messages = build_messages(sample, cfg.data.system_prompt, cfg.data.prompt_suffix)
        text = " ".join(p["text"] for m in messages for p in m["content"] if p.get("type") == "text")
        images = prepare_sample_images(sample, cfg.data)
        if len(messages) != 1 or len(images) != 1 or messages[0]["content"][0].get("type") != "image":
            raise SystemExit(f"sample {sample.id}: the benchmark expects one user turn with one leading image")
        rows.append({"prompt": [{"role": "user", "content": text}], "image": images[0]})
    # Fairness check: TRL's tokenisation of the first prompt equals mmrl's.
    first = rows[0]
    trl_ids = processor.apply_chat_template(
        conversation=[prepare_multimodal_messages(first["prompt"], images=[first["image"]])],
        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ours = encode_one(processor, samples[0], cfg.data)["input_ids"]
    if list(trl_ids[0]) != ours[0].tolist():
        raise SystemExit(f"prompt tokens differ between TRL ({len(trl_ids[0])}) and mmrl ({ours.shape[1]}); "
                         "the comparison would not be fair")
    return Dataset.from_list(rows), len(trl_ids[0])


def count_fused_lm_head(counters: StructuralCounters) -> None:
    """TRL's training forward (`fused_lm_head=True`) projects hidden states with the LM head weight directly, not
    through the module, so the module hook misses it: count the rows it hands to its chunked log-prob kernel.
    (Off Triton devices, CPU included, TRL scores every position; on CUDA only the completion positions.)"""
    from trl.trainer import utils as trl_utils

    kernel = trl_utils._ChunkedLogProbFunction
    if getattr(kernel, "_bench_counted", False):
        kernel = kernel._bench_original

    class Counted:
        _bench_counted = True
        _bench_original = kernel

        @staticmethod
        def apply(hidden: torch.Tensor, *rest: Any) -> Any:
            if counters.active:
                counters.counts["lm_head_rows"] += hidden.numel() // hidden.shape[-1]
            return kernel.apply(hidden, *rest)

    trl_utils._ChunkedLogProbFunction = Counted


def run_trl(args: argparse.Namespace, data_path: Path, work: Path) -> dict[str, Any]:
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mmrl.models.loading import load_policy
    from mmrl.preflight import load_config

    cfg = load_config(None, mmrl_overrides(args, data_path, work / "trl"))
    loaded = load_policy(cfg.model, device=args.device, for_training=True)
    processor = loaded.processor
    image_proc = processor.image_processor  # let TRL's processor keep the prepared size, as mmrl does
    pixels = args.image_size * args.image_size
    image_proc.max_pixels = max(getattr(image_proc, "max_pixels", 0) or 0, pixels)
    if isinstance(getattr(image_proc, "size", None), dict) and "longest_edge" in image_proc.size:
        image_proc.size = {**image_proc.size, "longest_edge": max(image_proc.size["longest_edge"], pixels)}
    dataset, prompt_tokens = trl_dataset(args, data_path, processor)
    config = GRPOConfig(
        output_dir=str(work / "trl"), max_steps=args.steps + args.warmup, learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
        per_device_train_batch_size=args.prompts_per_step * args.group_size, gradient_accumulation_steps=1,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens,
        generation_kwargs={"min_new_tokens": args.max_new_tokens}, temperature=1.0, top_p=1.0, top_k=0,
        beta=args.beta, loss_type="dapo", scale_rewards="group", num_iterations=1, use_vllm=False,
        shuffle_dataset=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=args.device == "cpu", bf16=args.dtype == "bf16", fp16=False, seed=args.seed,
        dataloader_num_workers=0, log_completions=False,
        gradient_checkpointing=cfg.model.gradient_checkpointing,  # TRL defaults to on; mmrl to off: use mmrl's
    )
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=[distinct_words], args=config, train_dataset=dataset,
                          processing_class=processor)
    checkpointing = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    print(f"# trl: gradient checkpointing {'on' if checkpointing else 'off'}, fused LM head, vLLM off", flush=True)
    counters = StructuralCounters(trainer.model, getattr(trainer, "ref_model", None))
    count_fused_lm_head(counters)
    clock = PhaseClock()
    clock.wrap(trainer, "_generate", "generate")
    clock.wrap(trainer, "_calculate_rewards", "rewards")
    clock.wrap(trainer, "_generate_and_score_completions", "rollout")
    durations: list[float] = []
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, _args, state, _control, **_kw):
            sync()
            self.start = time.perf_counter()
            counters.active = clock.active = state.global_step >= args.warmup

        def on_step_end(self, _args, state, _control, **_kw):
            sync()
            durations.append(time.perf_counter() - self.start)

    trainer.add_callback(StepTimer())
    trainer.remove_callback(PrinterCallback)  # TRL's per-step log dicts would bury the table
    trainer.train()
    counters.close()
    timed = durations[args.warmup:]
    seconds = sum(timed)
    history = [h for h in trainer.state.log_history if "loss" in h][args.warmup:]
    lengths = [h.get("completions/mean_length", float("nan")) for h in history]
    completions = args.prompts_per_step * args.group_size * len(timed)
    rollout = clock.seconds["rollout"]
    return {
        "seconds": seconds, "completions": completions, "steps": len(timed),
        "completion_tokens": sum(lengths) * args.prompts_per_step * args.group_size,
        "phases": {"generate": clock.seconds["generate"], "rewards": clock.seconds["rewards"],
                   "rollout, other": rollout - clock.seconds["generate"] - clock.seconds["rewards"],
                   "update (fwd+bwd+optim)": seconds - rollout, "other": 0.0},
        "counts": dict(counters.counts),
        "prompt_tokens": float(prompt_tokens),
        "loss": [h.get("loss") for h in history],
        "config": loaded.model.config,
    }


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
def summarize(results: dict[str, dict[str, Any]], args: argparse.Namespace, matmul: MatmulRates | None = None) -> str:
    """The comparison table; with `matmul` (the run's sampled rates), the physical bound rows too: the fraction of the
    bound at the median rate (the load the steps saw) and, more conservative, at the best one."""
    names = list(results)
    def unique_images(r: dict[str, Any]) -> int:  # one image per prompt, each prompt seen once per step
        return args.prompts_per_step * r["steps"]

    rows = []

    def row(label: str, fn) -> None:
        rows.append([label] + [fn(results[n]) for n in names])

    row("samples/s (completions/s)", samples_per_second)
    row("seconds per step", lambda r: r["seconds"] / r["steps"])
    row("completion tokens/s", lambda r: r["completion_tokens"] / r["seconds"])
    for phase in ("generate", "rewards", "rollout, other", "update (fwd+bwd+optim)", "other"):
        row(f"  {phase} (s/step)", lambda r, p=phase: r["phases"][p] / r["steps"])
    row("vision-encoder calls / unique image", lambda r: r["counts"].get("vision_calls", 0) / unique_images(r))
    row("images encoded / unique image", lambda r: r["counts"].get("images_encoded", 0) / unique_images(r))
    row("LM-head rows / completion token", lambda r: r["counts"].get("lm_head_rows", 0) / r["completion_tokens"])
    row("LM token positions / completion token", lambda r: r["counts"].get("lm_positions", 0) / r["completion_tokens"])
    row("mean completion length", lambda r: r["completion_tokens"] / r["completions"])
    row("prompt tokens per prompt (image included)", lambda r: r["prompt_tokens"])
    if matmul:
        # the same useful work for both sides: the step's shape, with the prompt length measured by either
        side = results.get("mmrl") or results["trl"]
        useful = step_flops(side["config"], side["prompt_tokens"], args.image_size, args.prompts_per_step,
                            args.group_size, args.max_new_tokens, not args.freeze_vision_tower, args.beta)
        median, best = matmul.median, matmul.best
        row("useful GFLOP per step", lambda r: useful / 1e9)
        row("matmul GFLOP/s (median of this run)", lambda r: median / 1e9)
        row("bound s/step (useful / median rate)", lambda r: useful / median)
        row("fraction of bound", lambda r: bound_fraction(useful, median, r["seconds"] / r["steps"]))
        row("fraction of bound at best rate", lambda r: bound_fraction(useful, best, r["seconds"] / r["steps"]))
    return table(["metric"] + names, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        raise SystemExit("--steps, --warmup and --rounds must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation notices from TRL's calls
    from mmrl.rewards.registry import register_reward

    register_reward(REWARD_NAME)(distinct_words)
    rounds = Rounds("mmrl", "trl")
    matmul = MatmulRates(args.device, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    matmul.sample()  # sampled again between and after the trainers: the load changes
    with tempfile.TemporaryDirectory(prefix="mmrl-bench-") as tmp:
        work = Path(tmp)
        data_path = build_data(args, work / "data")
        print(f"# preset={args.preset} device={args.device} dtype={args.dtype} image={args.image_size}x"
              f"{args.image_size} G={args.group_size} prompts/step={args.prompts_per_step} "
              f"new_tokens={args.max_new_tokens} (forced) beta={args.beta} "
              f"vision_tower={'frozen' if args.freeze_vision_tower else 'trainable'} warmup={args.warmup} steps={args.steps} "
              f"threads={args.threads} rounds={args.rounds}", flush=True)
        for round_ in range(args.rounds):
            results: dict[str, dict[str, Any]] = {}
            for side in [args.only] if args.only else rounds.order(round_):
                torch.manual_seed(args.seed)
                results[side] = (run_mmrl if side == "mmrl" else run_trl)(args, data_path, work / f"round{round_}")
                print(f"# {side}: {samples_per_second(results[side]):.3f} samples/s, losses {results[side]['loss']}",
                      flush=True)
                matmul.sample()
            rounds.add(results)
    print(matmul.describe(args.dtype), flush=True)
    print(summarize(rounds.pooled, args, matmul))
    for line in rounds.report("speedup_vs_trl"):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
