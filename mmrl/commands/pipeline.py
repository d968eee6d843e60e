"""`mmrl pipeline CONFIG [key=value ...]`: run a recipe of steps (build data, SFT, GRPO, eval), resumably."""

from __future__ import annotations

import argparse

from mmrl.commands import add_command

EXAMPLES = """\
  mmrl pipeline configs/quickstart.yaml
  mmrl pipeline configs/quickstart.yaml model.name_or_path=tiny output_dir=runs/qs_tiny
  mmrl pipeline configs/curr_reft/curr_reft.yaml model.name_or_path=tiny   # offline smoke run
  mmrl pipeline configs/quickstart.yaml --plan                              # what would run, run nothing
"""


def register(subparsers, name: str) -> None:
    parser = add_command(
        subparsers,
        name,
        help="run a recipe of steps (data, SFT, GRPO, eval)",
        description="Run the `pipeline:` steps of CONFIG in order. Step i writes into <output_dir>/<step name>/ and\n"
        "feeds the later steps: build-data sets data.train/data.eval (or the curriculum stages' data), sft/train set\n"
        "model.name_or_path to their final checkpoint; a step's own `overrides` win. A finished step (DONE.json)\n"
        "is skipped on re-run unless a step whose outputs it reads finished after it (then it runs again, an\n"
        "sft/train step from scratch); an interrupted sft/train step resumes from its latest complete checkpoint.\n"
        "Ends with <output_dir>/summary.json (accuracy per eval label), a markdown table and accuracy.png.\n"
        "Overrides given here apply to the pipeline config, before each step's own overrides.",
        examples=EXAMPLES,
    )
    parser.add_argument("config", help="path to a YAML config with a `pipeline:` list")
    parser.add_argument("overrides", nargs="*", help="dotted overrides key.path=value")
    parser.add_argument("--plan", action="store_true", help="print the steps and whether each is done; run nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.plan:
        return _print_plan(args)
    from mmrl.runs.directory import check_output_dir
    from mmrl.workflow import load_plan, run_pipeline

    check_output_dir(load_plan(args.config, args.overrides).root, "output_dir")  # before the first step runs
    run_pipeline(args.config, args.overrides)
    return 0


def _print_plan(args: argparse.Namespace) -> int:
    from mmrl.workflow import load_plan
    from mmrl.workflow.seeds import seed_overrides

    plan = load_plan(args.config, args.overrides)
    if not plan.config.seeds:
        _print_steps(plan)
        return 0
    # `seeds:` runs every step in <output_dir>/seed-<seed>/, not in <output_dir>/: show each seed's own state
    print(f"pipeline {plan.config.name}: seeds {plan.config.seeds}, each into {plan.root}/seed-<seed>/")
    for seed in plan.config.seeds:
        print(f"== seed {seed}")
        _print_steps(load_plan(args.config, seed_overrides(args.overrides, plan.root, seed)))
    return 0


def _print_steps(plan) -> None:
    from mmrl.workflow import read_done

    print(f"pipeline {plan.config.name}: {len(plan.steps)} steps in {plan.root}")
    for i, step in enumerate(plan.steps, 1):
        done = read_done(plan.step_dir(step))
        state = f"done {done.get('finished_at', '')}".strip() if done else "to run"
        print(f"step {i}/{len(plan.steps)} {step.name} [{step.kind}]: {state}")
