"""`mmrl reward`: score saved completions with a reward or a composite, or list the registered rewards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from mmrl.commands import add_command
from mmrl.errors import UserError

EXAMPLES = """  mmrl reward list
  mmrl reward score --reward accuracy --input runs/quickstart/grpo/samples/step-200.jsonl
  mmrl reward score --reward accuracy --reward format=0.5 --input runs/quickstart/grpo/samples/step-200.jsonl
  mmrl reward score --reward '[{name: accuracy, weight: 1.0}, {name: format, weight: 0.5}]' --input COMPLETIONS.jsonl
  mmrl reward score --reward MY_REWARDS.py:length_bonus --kwargs '{"target": 200}' --input COMPLETIONS.jsonl
  Each input line is {"completion": "...", "answer": ..., "task": ..., <other columns>}.
  Output: one JSON line per item ({"line": N, "id": ..., "total": ..., <reward>: ...}), then a summary line
  {"summary": {"items": N, "total": {"mean": ..., "none": ..., "errors": ..., "timeouts": ...}, <reward>: {...}}}.
  None = unscorable (a gold the reward cannot use), or the reward raised on that item (counted under "errors");
  a completion that ran out of time on a usable gold scores 0 and is counted under "timeouts". A reward that
  raises on some items exits 1 after printing the scores; one that raises on every item is an error (exit 2)
  naming what it raised.
"""


def register(subparsers, name: str) -> None:
    parser = add_command(subparsers, name, "score completions with a reward",
                         "Score saved completions with registered or user rewards (debug a reward offline).", EXAMPLES)  # fmt: skip
    sub = parser.add_subparsers(dest="reward_command", metavar="ACTION")
    listing = sub.add_parser("list", help="list registered rewards", description="Registered rewards, one line each.",
                             epilog="examples:\n  mmrl reward list\n  mmrl reward list | grep -i box\n",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.set_defaults(func=run_list)
    score = sub.add_parser("score", help="score a JSONL file of completions", epilog="examples:\n" + EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    score.add_argument("--reward", action="append", required=True,
                       help="NAME, NAME=WEIGHT, path/to/file.py:function, a YAML/JSON list of {name, weight, kwargs}, "
                            "or a YAML config file with a `rewards:` list; repeatable")  # fmt: skip
    score.add_argument("--input", required=True, type=Path, help="JSONL file, one {completion, <columns>} per line")
    score.add_argument("--kwargs", default=None, help="JSON kwargs for a single --reward")
    score.add_argument("--timeout", type=float, default=None, help="seconds per completion (default: the spec's, 5)")
    score.add_argument("--workers", type=int, default=None, help="reward worker processes (0: in-process)")
    score.add_argument("--pred-frame", default=None, choices=("pixel", "input_pixel", "norm1000", "norm1"),
                       help="frame the model answered boxes/points in, for every line (default: a line's model_frame, "
                            "else the run's model_interface.json next to --input; a reward's pred_frame kwarg wins)")
    score.set_defaults(func=run_score)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_list(args: argparse.Namespace) -> int:
    from mmrl.rewards import get_reward, list_rewards

    for name in list_rewards():
        doc = (get_reward(name).__doc__ or "").strip().splitlines()
        print(f"{name:22s} {doc[0] if doc else ''}")
    return 0


def _specs(values: list[str], kwargs_text: str | None) -> list[dict]:
    specs: list[dict] = []
    for value in values:
        path = Path(value)
        if value.endswith((".yaml", ".yml")) and path.is_file():
            loaded = yaml.safe_load(path.read_text()) or {}
            items = loaded.get("rewards") if isinstance(loaded, dict) else loaded
            if not isinstance(items, list):
                raise UserError(f"{value}: expected a `rewards:` list of {{name, weight, kwargs}}")
            specs.extend(items)
        elif value.lstrip().startswith("["):
            try:
                items = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise UserError(f"--reward: cannot parse the list {value!r}: {err}") from err
            specs.extend(items)
        else:
            name, sep, weight = value.rpartition("=") if "=" in value else (value, "", "")
            try:
                specs.append({"name": name, "weight": float(weight)} if sep else {"name": value})
            except ValueError as err:
                raise UserError(f"--reward {value}: the weight after '=' must be a number") from err
    if kwargs_text:
        if len(specs) != 1:
            raise UserError("--kwargs applies to a single --reward; put kwargs in the list form for several")
        try:
            specs[0]["kwargs"] = json.loads(kwargs_text)
        except json.JSONDecodeError as err:
            raise UserError(f"--kwargs is not valid JSON: {err}") from err
    for spec in specs:
        if not isinstance(spec, dict) or "name" not in spec:
            raise UserError(f"--reward: each entry needs a name, got {spec!r}")
    return specs


def _read(path: Path) -> tuple[list[str], dict[str, list], list[int]]:
    if not path.is_file():
        raise UserError(f"--input {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"--input {path}: not UTF-8 text (byte {err.start}); re-save it as UTF-8") from err
    records, line_numbers = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict) or not isinstance(record.get("completion"), str):
            raise UserError(f"{path}:{lineno}: each line needs a string field 'completion'")
        records.append(record)
        line_numbers.append(lineno)
    keys = sorted({k for r in records for k in r if k != "completion"})
    columns = {k: [_tuple_sizes(k, r.get(k)) for r in records] for k in keys}
    return [r["completion"] for r in records], columns, line_numbers


def _run_interface(path: Path) -> tuple[Path, dict] | None:
    """The `model_interface.json` of the run a samples file belongs to (`RUN/samples/step-N.jsonl`), if any."""
    for folder in (path.parent, path.parent.parent):
        found = folder / "model_interface.json"
        if found.is_file():
            try:
                record = json.loads(found.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                return found, record
    return None


def _fill_model_frame(args: argparse.Namespace, specs: list, columns: dict[str, list], n: int) -> None:
    """The `model_frame` column box/point rewards read predictions in: `--pred-frame` for every line, else each
    line's own, else the run's recorded frame (`model_interface.json` beside the samples). Where none is known and a
    reward reads coordinates, one line says which rule reads them (the old one), never silently."""
    from mmrl.models.interface import reads_coordinates

    given = columns.get("model_frame") or [None] * n
    if args.pred_frame:
        columns["model_frame"] = [args.pred_frame] * n
        return
    if all(v for v in given):
        return
    recorded = _run_interface(args.input)
    frame = recorded[1].get("pred_frame") if recorded else None
    if frame:
        columns["model_frame"] = [v or frame for v in given]
        print(f"boxes/points of lines without model_frame read in {frame} (pred_frame of {recorded[0]})",
              file=sys.stderr)
        return
    reader = reads_coordinates(specs, [t for t in columns.get("task", []) if t])
    if reader is not None and not any(given):
        print(f"{reader} reads boxes/points, but the lines carry no model_frame and no model_interface.json is next "
              "to --input: read as input pixels where input_size differs from image_size, else in the gold's "
              "box_frame; give --pred-frame (norm1000 for Qwen2-VL/Qwen3-VL, input_pixel for Qwen2.5-VL)",
              file=sys.stderr)


def _tuple_sizes(key: str, value):
    return tuple(value) if key in ("image_size", "input_size") and isinstance(value, list) else value


def run_score(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mmrl.config.rl import RewardSpec
    from mmrl.rewards.composite import RewardComposite
    from mmrl.rewards.registry import get_reward, kwargs_problem

    if args.timeout is not None and not args.timeout > 0:  # 0 used to mean the default, a negative all-None
        raise UserError(f"--timeout {args.timeout}: must be a number of seconds > 0")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers {args.workers}: must be 0 (in-process) or more")
    try:
        specs = [RewardSpec(**s) for s in _specs(args.reward, args.kwargs)]
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        where = f"{field}: " if field else ""  # a whole-spec check (e.g. a kwargs.pred_frame that is no frame)
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"--reward: {where}{message} (got {first.get('input')!r:.60})") from err
    except (TypeError, ValueError) as err:
        raise UserError(f"--reward: {err}".splitlines()[0]) from err
    for spec in specs:  # the same kwargs check a config gets at load, before the input is read
        problem = kwargs_problem(spec.name, get_reward(spec.name), spec.kwargs) if spec.kwargs else None
        if problem is not None:
            raise UserError(f"--reward: {problem}")
    completions, columns, line_numbers = _read(args.input)
    _fill_model_frame(args, specs, columns, len(completions))
    with RewardComposite(specs, timeout_s=args.timeout, workers=args.workers) as composite:
        result = composite.score(completions, columns)
    _refuse_broken(result, len(completions), line_numbers)
    ids = columns.get("id")
    for i in range(len(completions)):
        where = {"line": line_numbers[i], **({"id": ids[i]} if ids is not None and ids[i] is not None else {})}
        print(json.dumps({**where, "total": result.total[i], **{k: v[i] for k, v in result.components.items()}}))
    summary = _summary(result)
    print(json.dumps({"summary": summary}))
    total = summary["total"]
    mean = "n/a" if total["mean"] is None else f"{total['mean']:.4f}"
    print(f"{summary['items']} items: mean total {mean} over {summary['items'] - total['none']} scored; "
          f"None {total['none']} ({total['errors']} where the reward raised); timeouts {total['timeouts']} "
          "(scored 0)", file=sys.stderr)
    for name, example in result.examples.items():
        print(f"example {name}: line {line_numbers[example['index']]} {example['kind']}: {example['message']}",
              file=sys.stderr)  # fmt: skip
    raised = {name: result.counters.get(f"{name}/errors", 0) for name in result.components}
    raised = {name: n for name, n in raised.items() if n}
    if raised:  # scored, but a reward has a bug: the scores are printed, the exit status says so (a script checks it)
        print("reward(s) raised: " + ", ".join(f"'{name}' on {n} of {len(completions)} items" for name, n in
                                               raised.items()) + "; fix them: return None for an item a reward "
              "cannot score, never raise (exit status 1)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _refuse_broken(result, n: int, line_numbers: list[int]) -> None:
    """A reward that raised on every item is broken, not facing bad golds: one line naming its error, exit 2
    (`mmrl train` refuses the same reward before training)."""
    for name in result.components:
        example = result.examples.get(name)
        if n and result.counters.get(f"{name}/errors", 0) == n and example is not None:
            raise UserError(f"reward '{name}' raised on every item ({example['message'].splitlines()[0]}, first at "
                            f"line {line_numbers[example['index']]}); fix the reward: return None for an item it "
                            "cannot score, never raise")


def _summary(result) -> dict:
    """Mean over the scored items, the number of None items, of those the reward raised on, and of timeouts, for
    the total and each reward."""

    def stats(values: list, timeouts: int, errors: int) -> dict:
        scored = [v for v in values if v is not None]
        return {"mean": sum(scored) / len(scored) if scored else None, "none": len(values) - len(scored),
                "errors": errors, "timeouts": timeouts}  # fmt: skip

    per_reward = {name: stats(values, result.counters.get(f"{name}/timeouts", 0), result.counters.get(f"{name}/errors", 0))
                  for name, values in result.components.items()}  # fmt: skip
    return {"items": len(result.total),
            "total": stats(result.total, sum(r["timeouts"] for r in per_reward.values()),
                           sum(r["errors"] for r in per_reward.values())), **per_reward}  # fmt: skip
