"""`mmrl data show|check DATASET`: print a dataset's samples as mmrl reads them, or check them before training."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmrl.commands import add_command
from mmrl.errors import UserError

EXAMPLES = """  mmrl data show runs/quickstart/data/train.jsonl --limit 3
  mmrl data show YOUR_DATA.parquet --format easyr1 --json   # a name in capitals: your own file
  mmrl data check runs/quickstart/data/train.jsonl
  mmrl data check --config runs/quickstart/grpo/config.yaml   # the datasets a run trained on
"""


def _spec(args: argparse.Namespace):
    from mmrl.config.data import DatasetSpec
    from mmrl.errors import UserError

    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:  # was a pydantic traceback (exit 1)
        raise UserError(f"--limit must be >= 1 (got {limit})")
    return DatasetSpec(path=args.dataset, format=args.format, split=args.split,
                       limit=getattr(args, "limit", None), image_root=args.image_root)


def _show(args: argparse.Namespace) -> int:
    from mmrl.data.dataset import load_samples

    samples = load_samples(_spec(args))
    missing: list[str] = []  # image files the records name that do not exist
    for sample in samples:
        record = sample.to_json()
        absent = [im for im in sample.images if isinstance(im, str) and not Path(im).is_file()]
        missing += absent
        if args.json:
            print(json.dumps(record, default=str, ensure_ascii=False))
            continue
        print(f"── {sample.id}  task={sample.task}  format={sample.meta.get('format')}")
        for image in record["images"]:
            print(f"   image: {image}" + ("   MISSING: no such file" if image in absent else ""))
        prompt = sample.prompt if isinstance(sample.prompt, str) else json.dumps(sample.prompt, ensure_ascii=False)
        print("   prompt: " + prompt.replace("\n", "\n           "))
        if sample.choices:
            print(f"   choices: {sample.choices}")
        print(f"   answer: {json.dumps(sample.answer, ensure_ascii=False)}")
        if sample.response:
            print(f"   response: {sample.response}")
    if not args.json:
        print(f"{len(samples)} samples")
    if missing:  # on stderr: --json output stays one record per line
        print(f"{len(missing)} image file(s) missing (first: {missing[0]}); training stops at them unless data.on_bad_image=skip; "
              "`mmrl data check` lists every problem", file=sys.stderr)
    return 0


def _check_sets(args: argparse.Namespace):
    """(data config, [(dataset spec, rewards or None)]) for `data check`: the named dataset, or every set of --config."""
    from mmrl.config.data import DataConfig

    if args.config is None:
        if args.dataset is None:
            raise UserError("say what to check: `mmrl data check DATASET` or `mmrl data check --config RUN.yaml`")
        cfg = DataConfig(max_image_pixels=args.max_image_pixels) if args.max_image_pixels else DataConfig()
        return cfg, [(_spec(args), None)]
    from mmrl.preflight import load_config

    run = load_config(args.config)
    data_cfg = run.data.model_copy(update={"max_image_pixels": args.max_image_pixels}) if args.max_image_pixels \
        else run.data
    if args.dataset is not None:
        return data_cfg, [(_spec(args), list(run.rewards))]
    sets = [(spec, list(run.rewards)) for spec in run.data.train]
    for stage in run.stages:
        if stage.enabled and (stage.data or stage.rewards):
            sets += [(spec, list(stage.rewards or run.rewards)) for spec in (stage.data or run.data.train)]
    sets += [(spec, None) for spec in run.data.eval]  # evaluation scores by task, as the accuracy reward does
    unique = {(spec.model_dump_json(), repr(rewards)): (spec, rewards) for spec, rewards in sets}
    sets = list(unique.values())
    if not sets:
        raise UserError(f"{args.config}: no datasets to check (data.train, data.eval and stages[].data are empty)")
    return data_cfg, sets


def _check(args: argparse.Namespace) -> int:
    from mmrl.data.checks import check_samples
    from mmrl.data.dataset import load_samples
    from mmrl.rewards.gold_check import gold_check

    data_cfg, sets = _check_sets(args)
    errors = 0
    for spec, rewards in sets:
        samples = load_samples(spec)
        report = check_samples(samples, data_cfg, gold_check(rewards), open_images=not args.no_images)
        for finding in report.findings:
            print(f"{finding.level}: {finding}", file=sys.stderr)
        print(f"{spec.path}: {report.summary()}")
        errors += len(report.errors)
    return 2 if errors else 0


def register(subparsers, name: str) -> None:
    parser = add_command(subparsers, name, "inspect and check datasets",
                         "Read a dataset in any supported format (auto-detected) and show or check its samples.",
                         EXAMPLES)
    sub = parser.add_subparsers(dest="data_command", metavar="{show,check}")
    check_help = ("find what would crash or mislead training: bad images, image slots vs images, boxes outside "
                  "their image or frame, golds the rewards cannot score; exit 2 on errors")
    leaf_examples = {
        "show": "  mmrl data show runs/quickstart/data/train.jsonl --limit 3\n"
                "  mmrl data show GEO3K.parquet --format easyr1 --json --limit 1   # your file, as mmrl reads it\n",
        "check": "  mmrl data check runs/quickstart/data/train.jsonl   # exit 2 and one line per problem (file:line, id)\n"
                 "  mmrl data check --config runs/quickstart/grpo/config.yaml   # every dataset of a run, its rewards\n",
    }
    for verb, help_text in (("show", "print samples"), ("check", check_help)):
        p = sub.add_parser(verb, help=help_text, description=help_text, epilog="examples:\n" + leaf_examples[verb],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("dataset", nargs=None if verb == "show" else "?",
                       help="JSONL/JSON/parquet file, imagefolder directory or datasets spec")
        p.add_argument("--format", default="auto", help="data format (default: auto-detect)")
        p.add_argument("--split", default=None, help="split for datasets specs")
        p.add_argument("--image-root", default=None, help="directory image paths are relative to")
        if verb == "show":
            p.add_argument("--limit", type=int, default=None, help="show at most N samples")
            p.add_argument("--json", action="store_true", help="one JSON object per line")
            p.set_defaults(func=_show)
        else:
            p.add_argument("--max-image-pixels", type=int, default=None, help="reject larger images")
            p.add_argument("--config", default=None, metavar="RUN.yaml",
                           help="check golds against this run's rewards (and, without DATASET, all of its data)")
            p.add_argument("--no-images", action="store_true", help="do not open images (faster; boxes in pixels "
                           "are then checked only against a declared image_size)")
            p.set_defaults(func=_check)

    def missing(args: argparse.Namespace) -> int:
        raise UserError("say what to do: `mmrl data show DATASET` or `mmrl data check DATASET`")

    parser.set_defaults(func=missing)
