"""`mmrl eval`: evaluate a model on a dataset (accuracy, pass@k / mean@k, per-task and per-category breakdown)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mmrl.commands import add_command
from mmrl.errors import UserError

EXAMPLES = """\
  mmrl eval --model tiny --data runs/quickstart/data/eval.jsonl --limit 20
  mmrl eval --model runs/quickstart/grpo --data runs/quickstart/data/eval.jsonl   # latest checkpoint -> grpo/eval/
  mmrl eval --model runs/quickstart/grpo/checkpoints/step-200 --data runs/quickstart/data/eval.jsonl --k 8 \\
      eval.greedy=false eval.temperature=0.7
  mmrl eval configs/quickstart.yaml model.name_or_path=runs/quickstart/grpo/checkpoints/step-200 \\
      data.eval=runs/quickstart/data/eval.jsonl
"""


def register(subparsers, name: str) -> None:
    parser = add_command(
        subparsers,
        name,
        help="evaluate a model on a dataset",
        description="Generate answers (greedy, or k samples per item), score them with the same extraction and "
        "verification as the rewards, and write report.json, report.md and generations.jsonl. Either give --model "
        "and --data, or a CONFIG whose model.name_or_path, data.eval and eval.* are used (flags override it).",
        examples=EXAMPLES,
    )
    parser.add_argument("config", nargs="?", default=None, help="optional YAML config (model, data.eval, eval.*)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides key.path=value (e.g. eval.max_new_tokens=64)")
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint directory (HF format), a run directory (its latest "
        "complete checkpoint), hub id, or preset tiny/small",
    )
    parser.add_argument("--data", action="append", default=None, help="evaluation dataset (repeat for several)")
    parser.add_argument("--k", type=int, default=None, help="samples per item; k > 1 samples (reports pass@k, mean@k)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most N items")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default: eval.output_dir; with --model, <run>/eval/<step>-<data> or "
        "runs/eval/<model>-<data>; with a CONFIG, <trainer.output_dir>/eval/<model>-<data>; "
        "-k8, -t0.7, -first20 added for --k, sampling and --limit)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def _split_config(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """A first positional that looks like `key=value` is an override, not a config path."""
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    return config, overrides


def _stem(text: str) -> str:
    path = Path(text.rstrip("/"))
    name = path.stem if path.suffix else path.name
    if name.startswith("step-") and path.parent.name == "checkpoints":  # runs/x/checkpoints/step-N -> x-step-N
        name = f"{path.parent.parent.name}-{name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "eval"


def _checkpoint_of_run(model: str) -> str:
    """A run directory (it has checkpoints/ and no config.json of its own) stands for its latest complete checkpoint."""
    from mmrl.checkpoints.store import find_latest

    path = Path(model)
    if not (path / "checkpoints").is_dir() or (path / "config.json").exists():
        return model
    latest = find_latest(path)
    if latest is None:
        raise UserError(
            f"--model {model}: this run directory has no complete checkpoint yet; train longer or give "
            "--model <checkpoint directory>"
        )
    return str(latest)


def _run_of_checkpoint(model: str) -> Path | None:
    """`runs/x/checkpoints/step-N` -> `runs/x` (so its evaluations land in that run's eval/)."""
    path = Path(model.rstrip("/"))
    if path.parent.name == "checkpoints" and path.name.startswith("step-") and path.is_dir():
        return path.parent.parent
    return None


def build_eval_config(args: argparse.Namespace):
    from mmrl.preflight import load_config

    config, overrides = _split_config(args)
    if config is None and args.model is None:
        raise UserError("give --model PATH_OR_PRESET (and --data DATASET), or a CONFIG; see `mmrl eval --help`")
    if args.k is not None and args.k < 1:
        raise UserError(f"--k must be >= 1 (got {args.k})")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1 (got {args.limit})")
    flags: list[str] = []
    if args.model is not None:
        args.model = _checkpoint_of_run(args.model)
        flags.append(f"model.name_or_path={args.model}")
    if args.k is not None:
        flags.append(f"eval.k={args.k}")
        # --k > 1 means sampling unless the user insisted on greedy (which then fails validation, as it should).
        if args.k > 1 and not any(o.startswith("eval.greedy=") for o in overrides):
            flags.append("eval.greedy=false")
    if args.limit is not None:
        flags.append(f"eval.limit={args.limit}")
    cfg = load_config(config, [*flags, *overrides])
    if not any(o.startswith("model.pred_frame=") for o in overrides):
        _frame_of_run(cfg)
    if args.data:
        cfg.data.eval = [{"path": d} for d in args.data]
    if not cfg.data.eval:
        where = f"{config}: data.eval is empty" if config else "no evaluation data"
        raise UserError(f"{where}; pass --data DATASET (a JSONL/JSON/parquet file or directory)")
    return cfg, config


def _frame_of_run(cfg) -> None:
    """A run's checkpoint answers boxes in the frame the run was told (`model.pred_frame` in its training config, as
    its model_interface.json records): eval reads them so, and says so in one line (override: model.pred_frame=...)."""
    import json
    import sys

    run_dir = _run_of_checkpoint(cfg.model.name_or_path)
    recorded = run_dir / "model_interface.json" if run_dir is not None else None
    if cfg.model.pred_frame != "auto" or recorded is None or not recorded.is_file():
        return
    try:
        interface = json.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if (
        isinstance(interface, dict)
        and interface.get("frame_source") == "model.pred_frame"
        and interface.get("pred_frame") in ("pixel", "input_pixel", "norm1000", "norm1")
    ):
        cfg.model.pred_frame = interface["pred_frame"]
        print(
            f"model.pred_frame={cfg.model.pred_frame}: as the run {run_dir} was trained with (its "
            "model_interface.json); give model.pred_frame=... to read boxes otherwise",
            file=sys.stderr,
        )


def default_out_dir(cfg, config: str | None, args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    if cfg.eval.output_dir:
        return Path(cfg.eval.output_dir)
    data = "+".join(_stem(spec.path) for spec in cfg.data.eval) + _settings_suffix(cfg)
    if config is not None and args.model is None:  # one folder per model and data: a second eval replaced the first
        return Path(cfg.trainer.output_dir) / "eval" / f"{_stem(cfg.model.name_or_path)}-{data}"
    run_dir = _run_of_checkpoint(cfg.model.name_or_path)
    if run_dir is not None:  # a run's checkpoint: into that run's eval/<step>-<data>
        return run_dir / "eval" / f"{Path(cfg.model.name_or_path.rstrip('/')).name}-{data}"
    return Path("runs") / "eval" / f"{_stem(cfg.model.name_or_path)}-{data}"


def _settings_suffix(cfg) -> str:
    """`-k8-t0.7-first10` for the settings that change the figures: without it a 10-item pass@8 of a checkpoint
    replaced the full greedy report of the same checkpoint in the same folder, without a word."""
    parts = [f"k{cfg.eval.k}"] if cfg.eval.k > 1 else []
    parts += [] if cfg.eval.greedy else [f"t{cfg.eval.temperature:g}"]
    parts += [f"first{cfg.eval.limit}"] if cfg.eval.limit else []
    return "".join(f"-{part}" for part in parts)


def run(args: argparse.Namespace) -> int:
    from mmrl.eval.evaluate import evaluate_config
    from mmrl.runs.directory import check_output_dir

    cfg, config = build_eval_config(args)
    out_dir = default_out_dir(cfg, config, args)
    # Before any generation: finding out afterwards that the report cannot be written wastes the whole evaluation.
    check_output_dir(out_dir, "--out" if args.out else "eval.output_dir" if cfg.eval.output_dir else "output directory")
    report = evaluate_config(cfg, out_dir, progress=not args.no_progress)
    print((out_dir / "report.md").read_text(encoding="utf-8"), end="")
    print(f"report: {out_dir / 'report.json'}")
    if cfg.eval.save_generations:
        print(f"generations: {out_dir / 'generations.jsonl'}")
    return 0 if report["n"] else 1
