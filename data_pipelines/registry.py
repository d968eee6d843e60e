"""The dataset builders, by name: the one registry `mmrl build-data` and pipeline `build-data` steps both read.

A builder is an argument schema (`add_arguments` on an argparse parser), a `run(namespace)` and optionally
`outputs(namespace)` ({name: path} of what it writes, for a pipeline to wire). Both the command line and a pipeline
step's `args` are checked against that one schema by `data_pipelines.builder_args.check_args` (same messages, same
field names: `--eval-n` is `eval_n`). Another module adds a builder with `register_builder(name, help, add_arguments,
run)`; `BUILDER_MODULES` lists modules imported (when present) before the names are read, so a later builder needs
one line here.

>>> {"synthetic", "curriculum", "cold-start", "rejection"} <= set(load_builders().names())
True
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmrl.errors import UserError
from mmrl.registry import Registry

SYNTHETIC_EXAMPLES = """examples:
  mmrl build-data synthetic --tasks color --n 64 --out data/color                 # data/color/train.jsonl
  mmrl build-data synthetic --tasks color,count --n 1000 --eval-n 200 --out data/color_count  # + eval.jsonl (seed+1)
  mmrl build-data synthetic --tasks grounding --forms open --image-size 56 --n 32 --out data/grounding
  mmrl build-data synthetic --tasks gui --n 64 --eval-n 16 --out data/gui_actions  # UI-R1-style GUI actions
"""
CURRICULUM_EXAMPLES = """examples:
  mmrl build-data curriculum runs/quickstart/data/train.jsonl data/quickstart_curriculum
  mmrl build-data curriculum MATHVISTA.json data/mathvista_curriculum --seed 42    # a name in capitals: your own file
"""
RECIPES_EXAMPLES = """examples:
  mmrl build-data recipes                       # data/: what every recipe's offline line reads
  mmrl build-data recipes --out /tmp/data --n 128
  mmrl build-data recipes --overwrite           # rebuild data/synth, gui, boxes, curriculum (refused without it)
"""


@dataclass
class Builder:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    examples: str | None = None  # shown by `mmrl build-data NAME --help`
    # {output name: path} the run writes, from its checked arguments; None: a pipeline step names them (args.outputs)
    outputs: Callable[[argparse.Namespace], dict[str, Path]] | None = None
    # What the schema's types cannot see (a config file the builder reads): raises a one-line UserError. A pipeline
    # runs it when it loads, so a bad step fails before the steps ahead of it run for hours.
    check: Callable[[argparse.Namespace], None] | None = None
    # {folder: the names the builder writes there}: `mmrl build-data` refuses a non-empty folder unless --overwrite
    # (which removes those names first, so no earlier image is left behind); None: the builder guards its own output
    writes: Callable[[argparse.Namespace], dict[Path, tuple[str, ...]]] | None = None


BUILDERS: Registry[Builder] = Registry("builder", "build-data")
# Argument names builders give their output directory: checked writable by `mmrl build-data`, set to the step
# directory by a pipeline step that does not give one.
OUTPUT_FIELDS = ("out", "out_dir", "output", "output_dir")
# Modules that register more builders (cold-start, rejection sampling, digits, multi-turn episodes); each must exist
# (a test imports them all).
BUILDER_MODULES: list[str] = ["data_pipelines.cold_start.cli", "data_pipelines.rejection", "data_pipelines.digits",
                              "data_pipelines.synthetic.episodes"]


def register_builder(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int | None],
    examples: str | None = None,
    outputs: Callable[[argparse.Namespace], dict[str, Path]] | None = None,
    check: Callable[[argparse.Namespace], None] | None = None,
    writes: Callable[[argparse.Namespace], dict[Path, tuple[str, ...]]] | None = None,
) -> None:
    BUILDERS.add(name, Builder(help, add_arguments, run, examples, outputs, check, writes))


def load_builders() -> Registry[Builder]:
    """The registry with every builder module imported (so its builders are registered)."""
    for module in BUILDER_MODULES:
        importlib.import_module(module)
    return BUILDERS


def _synthetic_args(p: argparse.ArgumentParser) -> None:
    from data_pipelines.synthetic import TASKS

    p.add_argument("--tasks", default="color", help=f"comma-separated: {','.join(TASKS)}; or gui alone")
    p.add_argument("--n", type=int, default=1000, help="number of training samples (train.jsonl)")
    p.add_argument(
        "--eval-n", type=int, default=0, help="number of held-out samples (eval.jsonl, drawn with --eval-seed); 0: none"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=None, help="seed of the eval split (default: --seed + 1)")
    p.add_argument("--out", required=True, help="output directory (train.jsonl [+ eval.jsonl] + images/)")
    p.add_argument("--forms", default="open,mc,yes_no", help="comma-separated: open,mc,yes_no")
    p.add_argument("--difficulty", default="1", help="1, 2, 3 or a comma-separated mix")
    p.add_argument("--image-size", type=int, default=112, help="square image side in pixels")
    p.add_argument("--no-cot", action="store_true", help="omit the <think>/<answer> SFT target")


def _synthetic(args: argparse.Namespace) -> int:
    from data_pipelines.synthetic import build_synthetic

    try:
        levels = [int(v) for v in args.difficulty.split(",")]
    except ValueError:
        raise UserError(f"--difficulty must be 1, 2, 3 or a comma-separated mix (got {args.difficulty})") from None
    eval_seed = args.seed + 1 if args.eval_seed is None else args.eval_seed
    if args.eval_n < 0:
        raise UserError(f"--eval-n must be >= 0 (got {args.eval_n})")
    if args.eval_n and eval_seed == args.seed:
        raise UserError("--eval-seed must differ from --seed so the eval split is held out")
    common = {
        "forms": [f.strip() for f in args.forms.split(",") if f.strip()],
        "difficulty": levels,
        "image_size": args.image_size,
        "with_cot": not args.no_cot,
    }
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    path = build_synthetic(tasks, args.n, args.seed, args.out, split="train", **common)
    print(f"wrote {args.n} samples to {path}")
    if args.eval_n:
        path = build_synthetic(tasks, args.eval_n, eval_seed, args.out, split="eval", **common)
        print(f"wrote {args.eval_n} held-out samples (seed {eval_seed}) to {path}")
    return 0


def _synthetic_outputs(args: argparse.Namespace) -> dict[str, Path]:
    out = Path(args.out)
    return {"train": out / "train.jsonl", **({"eval": out / "eval.jsonl"} if args.eval_n else {})}


def _curriculum_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="dataset with verifiable open answers (any supported format)")
    p.add_argument("out_dir", help="output directory for stage1_yes_no / stage2_mc / stage3_open .jsonl")
    p.add_argument("--seed", type=int, default=0)


def _curriculum(args: argparse.Namespace) -> int:
    from data_pipelines.curriculum import build_curriculum

    paths = build_curriculum(args.input, args.out_dir, seed=args.seed)
    for name, path in paths.items():
        count = sum(1 for line in path.read_text().splitlines() if line.strip())
        print(f"{name}: {count} samples -> {path}")
    return 0


def _curriculum_outputs(args: argparse.Namespace) -> dict[str, Path]:
    # build_curriculum writes these three files (its doctest pins the names)
    return {stage: Path(args.out_dir) / f"{stage}.jsonl" for stage in ("stage1_yes_no", "stage2_mc", "stage3_open")}


def _recipes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data", help="output directory (default: data): synth/, gui/, boxes/, curriculum/")
    p.add_argument("--n", type=int, default=64, help="training items per dataset (eval splits get n / 4)")
    p.add_argument("--seed", type=int, default=0)


def _recipes(args: argparse.Namespace) -> int:
    from data_pipelines.recipes import build_recipe_data

    for name, path in build_recipe_data(args.out, seed=args.seed, n=args.n).items():
        print(f"{name}: {path}")
    return 0


def _synthetic_writes(args: argparse.Namespace) -> dict[Path, tuple[str, ...]]:
    return {Path(args.out): ("train.jsonl", "eval.jsonl", "images")}


def _recipes_writes(args: argparse.Namespace) -> dict[Path, tuple[str, ...]]:
    # each dataset's own folder, whole: data/ itself may hold the user's other data
    return {Path(args.out) / name: ("*",) for name in ("synth", "gui", "boxes", "curriculum")}


register_builder(
    "synthetic",
    "procedurally drawn visual tasks with verifiable answers",
    _synthetic_args,
    _synthetic,
    SYNTHETIC_EXAMPLES,
    _synthetic_outputs,
    writes=_synthetic_writes,
)
register_builder(
    "curriculum",
    "yes/no, multiple-choice and open stages (Curr-ReFT)",
    _curriculum_args,
    _curriculum,
    CURRICULUM_EXAMPLES,
    _curriculum_outputs,
)
register_builder(
    "recipes",
    "small synthetic data for every recipe's offline line (seconds on a CPU)",
    _recipes_args,
    _recipes,
    RECIPES_EXAMPLES,
    writes=_recipes_writes,
)
