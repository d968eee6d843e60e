"""How unevenly the processes of a real GRPO launch work per optimizer step, and what padding them would cost.

    accelerate launch --config_file configs/accelerate/ddp_cpu_2proc.yaml benchmarks/uneven_forwards.py \\
        CONFIG OUT [overrides...]

Each process counts, per optimizer step, the calls of the policy's first text-decoder layer (each is one per-layer
parameter gather under ZeRO-3 or a per-layer FSDP wrap) by phase: rollout (model in eval mode: prefill and decode
steps), no-grad update forwards (old / reference log-probs) and training forwards (grad on), plus its training
micro-batches (`engine.forward` calls) and their tokens. The main process gathers every process's counts and writes
OUT/uneven_forwards.json; the figures:

- steps whose processes ran different numbers of training micro-batches, and the padding forwards that would make
  them equal (a zero-weight micro-batch on every process below the step's largest count), as a share of the real
  micro-batches (= of the training tokens when a padding micro-batch copies a mean one) and, at least, of the
  training tokens when it is a prompt with a one-token completion;
- the same for the first layer's calls in the rollout and in the whole step (what ZeRO-3 would have to equalise).

Last line: `padding_forward_share=<float>` (padding micro-batches / real micro-batches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmrl.config import load_config
from mmrl.parallel.distributed import all_gather_objects, exit_process
from mmrl.rl.trainer import GRPOLoop


def first_decoder_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The first module whose class name ends in DecoderLayer (the text decoder's first layer)."""
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            return module
    raise SystemExit("uneven_forwards: no *DecoderLayer in the policy")


class StepCounts:
    """Counts of one process, closed at every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, int]] = []
        self.current = self._fresh()

    @staticmethod
    def _fresh() -> dict[str, int]:
        return {
            "rollout_layer_calls": 0,
            "nograd_layer_calls": 0,
            "train_layer_calls": 0,
            "micro_batches": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }

    def layer_called(self, layer: torch.nn.Module, *_: Any) -> None:
        phase = "rollout" if not layer.training else "train" if torch.is_grad_enabled() else "nograd"
        self.current[f"{phase}_layer_calls"] += 1

    def micro_batch(self, completion_mask: torch.Tensor, prompt: dict[str, Any]) -> None:
        self.current["micro_batches"] += 1
        self.current["prompt_tokens"] += int(prompt["input_ids"].shape[-1])  # once per group (shared prefix)
        self.current["completion_tokens"] += int(completion_mask.sum())

    def close_step(self) -> None:
        self.steps.append(self.current)
        self.current = self._fresh()


def instrument(trainer: GRPOLoop, counts: StepCounts) -> None:
    run = trainer.run
    first_decoder_layer(run.model).register_forward_pre_hook(counts.layer_called)
    forward, optimizer_step = run.engine.forward, run.optimizer_step

    def counted_forward(
        prompt: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        counts.micro_batch(completion_mask, prompt)
        return forward(prompt, completion_ids, completion_mask, **kwargs)

    def counted_step(loss_value: float) -> tuple[float, bool]:
        out = optimizer_step(loss_value)
        counts.close_step()
        return out

    run.engine.forward = counted_forward
    run.optimizer_step = counted_step


def padding(per_rank: list[list[int]]) -> tuple[int, int, int]:
    """(real, padding, steps that differ) for per-rank per-step counts: padding raises every rank to the step's max."""
    real = sum(sum(r) for r in per_rank)
    steps = list(zip(*per_rank, strict=True))
    pad = sum(max(s) * len(s) - sum(s) for s in steps)
    return real, pad, sum(1 for s in steps if len(set(s)) > 1)


def summarise(gathered: list[list[dict[str, int]]]) -> dict[str, Any]:
    world, n_steps = len(gathered), len(gathered[0])
    out: dict[str, Any] = {"world_size": world, "optimizer_steps": n_steps}
    for key in ("micro_batches", "rollout_layer_calls", "nograd_layer_calls", "train_layer_calls"):
        real, pad, differ = padding([[s[key] for s in rank] for rank in gathered])
        out[key] = {"real": real, "padding": pad, "padding_share": pad / max(1, real), "steps_differing": differ}
    every = [[s["rollout_layer_calls"] + s["nograd_layer_calls"] + s["train_layer_calls"] for s in r] for r in gathered]
    real, pad, differ = padding(every)
    out["all_layer_calls"] = {
        "real": real,
        "padding": pad,
        "padding_share": pad / max(1, real),
        "steps_differing": differ,
    }
    # A padding micro-batch's cost in tokens: a copy of a mean one (then the share equals the forwards'), or at least
    # a prompt with a one-token completion (every trainable parameter must still take part in it).
    prompt = sum(s["prompt_tokens"] for rank in gathered for s in rank)
    tokens = prompt + sum(s["completion_tokens"] for rank in gathered for s in rank)
    micro = out["micro_batches"]
    out["padding_token_share_minimal"] = micro["padding"] * (prompt / max(1, micro["real"]) + 1) / max(1, tokens)
    out["steps_with_an_idle_rank"] = sum(
        1
        for step in zip(*gathered, strict=True)
        if any(s["micro_batches"] == 0 for s in step) and any(s["micro_batches"] for s in step)
    )
    out["per_step_micro_batches"] = [[rank[i]["micro_batches"] for rank in gathered] for i in range(n_steps)]
    return out


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("config", help="a GRPO config (a resolved run's config.yaml works)")
    parser.add_argument("out_dir", help="where uneven_forwards.json is written")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for mmrl train")
    args = parser.parse_args()
    config, out_dir, overrides = args.config, args.out_dir, args.overrides
    trainer = GRPOLoop(load_config(config, overrides))
    counts = StepCounts()
    instrument(trainer, counts)
    trainer.train()
    gathered = all_gather_objects(counts.steps, trainer.run.dist.world_size)
    if trainer.run.dist.is_main:
        summary = summarise(gathered)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "uneven_forwards.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps({k: v for k, v in summary.items() if k != "per_step_micro_batches"}, indent=1))
        print(f"padding_forward_share={summary['micro_batches']['padding_share']:.4f}")


if __name__ == "__main__":  # reward worker processes re-import this module: guard the run
    main()
    exit_process(0)
