"""Cold-start data for multi-turn GUI episodes: the `gui_steps` environment's expert, turn by turn.

For each start seed, the expert plays the episode; every turn becomes one SFT record in the chat format (`messages`:
the conversation so far — each observation's screen and text, the expert's earlier actions — then the expert's action
as the assistant turn to learn), so cold-start SFT sees the conversations the multi-turn rollout builds. The starts
(`starts.jsonl`: one record per seed, `meta.seed`) and held-out starts (`eval.jsonl`, other seeds) seed the
environment in training and evaluation.

>>> import tempfile
>>> paths = build_gui_episodes(2, 1, tempfile.mkdtemp(), env_kwargs={"min_actions": 2, "max_actions": 2})
>>> sorted(paths), sum(1 for _ in open(paths["sft"]))
(['eval', 'sft', 'starts'], 4)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrl.data.sample import Sample
from mmrl.envs.gui import GuiStepsEnv

EVAL_SEED_OFFSET = 1_000_000  # held-out starts: seeds no training start uses


def _start(seed: int, split: str) -> str:
    return json.dumps(
        {"id": f"{split}-{seed}", "prompt": "Play the episode.", "answer": "done", "meta": {"seed": seed}}
    )


def build_gui_episodes(
    n: int, eval_n: int, out_dir: str | Path, seed: int = 0, env_kwargs: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write `sft.jsonl` (the expert's turns of `n` episodes), `starts.jsonl` (their `n` seeds) and `eval.jsonl`
    (`eval_n` held-out seeds) under `out_dir`, screens under `out_dir/images/`; returns the three paths."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, starts = [], []
    for k in range(n):
        start = seed + k
        env = GuiStepsEnv(**(env_kwargs or {}))
        observation = env.reset(Sample(id=str(start), prompt="", answer=None, meta={"seed": start}))
        messages: list[dict[str, Any]] = []
        images: list[str] = []
        done = False
        while not done:
            name = f"images/{start}-{len(images)}.png"
            observation["images"][0].save(out / name)
            images.append(name)
            messages.append(
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": observation["text"]}]}
            )
            action = env.expert_action()
            turn = {"role": "assistant", "content": [{"type": "text", "text": action}]}
            records.append(
                json.dumps(
                    {
                        "id": f"gui-episode-{start}-turn-{len(images)}",
                        "images": list(images),
                        "messages": messages + [turn],
                    }
                )
            )
            messages.append(turn)
            observation, _, done, _ = env.step(action)
        starts.append(_start(start, "start"))
    paths = {"sft": out / "sft.jsonl", "starts": out / "starts.jsonl", "eval": out / "eval.jsonl"}
    paths["sft"].write_text("\n".join(records) + "\n")
    paths["starts"].write_text("\n".join(starts) + "\n")
    held_out = [_start(seed + EVAL_SEED_OFFSET + k, "eval") for k in range(eval_n)]
    paths["eval"].write_text("\n".join(held_out) + ("\n" if held_out else ""))
    return paths


# -- `mmrl build-data gui-episodes` -----------------------------------------------------------------------------------
EXAMPLES = """examples:
  mmrl build-data gui-episodes --n 200 --eval-n 24 --out data/gui_episodes    # sft.jsonl, starts.jsonl, eval.jsonl
  mmrl build-data gui-episodes --n 64 --max-actions 4 --out data/gui_episodes_long
"""


def _arguments(p: Any) -> None:
    p.add_argument("--n", type=int, default=200, help="expert episodes (sft.jsonl) and training starts (starts.jsonl)")
    p.add_argument("--eval-n", type=int, default=24, help="held-out starts (eval.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="first start seed")
    p.add_argument("--min-actions", type=int, default=2, help="shortest goal (2..4 actions)")
    p.add_argument("--max-actions", type=int, default=2, help="longest goal (2..4 actions)")
    p.add_argument("--varied-layout", action="store_true", help="a new screen per episode (default: one screen)")
    p.add_argument("--out", required=True, help="output directory")


def _kwargs(args: Any) -> dict[str, Any]:
    return {
        "image_size": 112,
        "min_actions": args.min_actions,
        "max_actions": args.max_actions,
        "show_help": False,
        "fixed_layout": not args.varied_layout,
        "step_reward": "success",
    }


def _run(args: Any) -> int:
    from mmrl.errors import UserError

    if args.n < 1 or args.eval_n < 0:
        raise UserError(f"--n must be >= 1 and --eval-n >= 0 (got {args.n}, {args.eval_n})")
    GuiStepsEnv(**_kwargs(args))  # the action range is checked before anything is written
    for name, path in build_gui_episodes(args.n, args.eval_n, args.out, args.seed, _kwargs(args)).items():
        print(f"{name}: {path}")
    return 0


def _outputs(args: Any) -> dict[str, Path]:
    out = Path(args.out)
    return {"sft": out / "sft.jsonl", "train": out / "starts.jsonl", "eval": out / "eval.jsonl"}


def _writes(args: Any) -> dict[Path, tuple[str, ...]]:
    return {Path(args.out): ("sft.jsonl", "starts.jsonl", "eval.jsonl", "images")}


def register() -> None:
    from data_pipelines.registry import register_builder

    register_builder(
        "gui-episodes",
        "expert turns and starts of multi-turn gui_steps episodes (docs/multiturn.md)",
        _arguments,
        _run,
        EXAMPLES,
        _outputs,
        writes=_writes,
    )


register()
