"""`mmrl data show|check DATASET`: print a dataset's samples as mmrl reads them, or open every image."""

from __future__ import annotations

import argparse
import json
import sys

from mmrl.commands import add_command
from mmrl.errors import UserError

EXAMPLES = """  mmrl data show data/train.jsonl --limit 3
  mmrl data show data/ai2d.parquet --format easyr1 --json
  mmrl data check data/train.jsonl
"""


def _spec(args: argparse.Namespace):
    from mmrl.config.data import DatasetSpec

    return DatasetSpec(path=args.dataset, format=args.format, split=args.split,
                       limit=getattr(args, "limit", None), image_root=args.image_root)


def _show(args: argparse.Namespace) -> int:
    from mmrl.data.dataset import load_samples

    samples = load_samples(_spec(args))
    for sample in samples:
        record = sample.to_json()
        if args.json:
            print(json.dumps(record, default=str, ensure_ascii=False))
            continue
        print(f"── {sample.id}  task={sample.task}  format={sample.meta.get('format')}")
        for image in record["images"]:
            print(f"   image: {image}")
        prompt = sample.prompt if isinstance(sample.prompt, str) else json.dumps(sample.prompt, ensure_ascii=False)
        print("   prompt: " + prompt.replace("\n", "\n           "))
        if sample.choices:
            print(f"   choices: {sample.choices}")
        print(f"   answer: {json.dumps(sample.answer, ensure_ascii=False)}")
        if sample.response:
            print(f"   response: {sample.response}")
    if not args.json:
        print(f"{len(samples)} samples")
    return 0


def _check(args: argparse.Namespace) -> int:
    from mmrl.config.data import DataConfig
    from mmrl.data.dataset import load_samples
    from mmrl.data.vision import find_bad_images

    cfg = DataConfig(max_image_pixels=args.max_image_pixels) if args.max_image_pixels else DataConfig()
    samples = load_samples(_spec(args))
    problems = find_bad_images(samples, cfg)
    images = sum(len(s.images) for s in samples)
    for problem in problems:
        print(f"{problem['id']}: {problem['reason']}", file=sys.stderr)
    print(f"{len(samples)} samples, {images} images, {len(problems)} bad")
    return 1 if problems else 0


def register(subparsers, name: str) -> None:
    parser = add_command(subparsers, name, "inspect and check datasets",
                         "Read a dataset in any supported format (auto-detected) and show or check its samples.",
                         EXAMPLES)
    sub = parser.add_subparsers(dest="data_command", metavar="{show,check}")
    leaf_examples = {
        "show": "  mmrl data show data/synth/train.jsonl --limit 3\n"
                "  mmrl data show /data/geo3k.parquet --format easyr1 --json --limit 1   # as mmrl reads it\n",
        "check": "  mmrl data check data/synth/train.jsonl            # exit 1 and one line per bad sample id\n"
                 "  mmrl data check /data/ui_r1.json --max-image-pixels 20000000\n",
    }
    for verb, help_text in (("show", "print samples"), ("check", "open every image and report problems")):
        p = sub.add_parser(verb, help=help_text, description=help_text, epilog="examples:\n" + leaf_examples[verb],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("dataset", help="JSONL/JSON/parquet file, imagefolder directory or datasets spec")
        p.add_argument("--format", default="auto", help="data format (default: auto-detect)")
        p.add_argument("--split", default=None, help="split for datasets specs")
        p.add_argument("--image-root", default=None, help="directory image paths are relative to")
        if verb == "show":
            p.add_argument("--limit", type=int, default=None, help="show at most N samples")
            p.add_argument("--json", action="store_true", help="one JSON object per line")
            p.set_defaults(func=_show)
        else:
            p.add_argument("--max-image-pixels", type=int, default=None, help="reject larger images")
            p.set_defaults(func=_check)

    def missing(args: argparse.Namespace) -> int:
        raise UserError("say what to do: `mmrl data show DATASET` or `mmrl data check DATASET`")

    parser.set_defaults(func=missing)
