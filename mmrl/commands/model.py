"""`mmrl model build-tiny OUT_DIR [--preset NAME | --like DIR]`: build an offline tiny VLM in Hugging Face format."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmrl.commands import add_command


def register(subparsers, name: str) -> None:
    from mmrl.models.presets import PRESETS

    parser = add_command(
        subparsers,
        name,
        help="build the embedded tiny model",
        description="Models: build the embedded offline Qwen2.5-VL-architecture model (random weights).",
        examples="  mmrl model build-tiny /tmp/tiny\n  mmrl model build-tiny /tmp/small --preset small --seed 1\n",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = add_command(
        actions,
        "build-tiny",
        help="build a preset into OUT_DIR (loadable with from_pretrained, offline)",
        description="Build the tiny VLM deterministically: same preset and seed -> identical weights and tokenizer.\n"
        + "\n".join(f"  {k}: {v.description}" for k, v in PRESETS.items()),
        examples="  mmrl model build-tiny /tmp/tiny --preset tiny\n"
        "  mmrl model build-tiny /tmp/tiny-qwen3 --like YOUR_MODELS/Qwen3-VL-4B-Instruct  # its tokenizer, template, "
        "processor\n",
    )
    build.add_argument("out_dir", help="directory to write the model to")
    build.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="size preset (default: tiny)")
    build.add_argument("--like", metavar="DIR", default=None,
                       help="a Hugging Face model folder (config, tokenizer, processor, chat template; no weights "
                       "needed): build its architecture shrunk, with its tokenizer, template, processor settings, "
                       "generation config and token ids unchanged (overrides --preset)")
    build.add_argument("--seed", type=int, default=0, help="seed for weights and tokenizer (default: 0)")
    build.add_argument("--overwrite", action="store_true",
                       help="rebuild over an earlier `mmrl model build-tiny` folder (a non-empty OUT_DIR is refused "
                       "without it; one this command did not write, always)")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    import json

    from mmrl.models.tiny import MARKER, build_tiny_model
    from mmrl.runs.directory import check_output_dir

    check_output_dir(args.out_dir, "OUT_DIR")
    _claim_out(Path(args.out_dir), args.overwrite, args.like)
    if args.like is not None:
        from mmrl.models.tiny_like import LIKE_MARKER, build_like, check_folder

        check_folder(Path(args.like).expanduser())  # a bad folder is refused before anything is written
        out = build_like(args.out_dir, Path(args.like).expanduser(), seed=args.seed)
        info = json.loads((Path(out) / LIKE_MARKER).read_text())
        print(f"built a tiny {info['model_type']} like {args.like} ({info['parameters']:,} parameters) into {out}")
        return 0
    out = build_tiny_model(args.out_dir, preset=args.preset, seed=args.seed)
    info = json.loads((Path(out) / MARKER).read_text())
    print(f"built preset '{args.preset}' ({info['parameters']:,} parameters) into {out}")
    return 0


def _claim_out(out: Path, overwrite: bool, like: str | None) -> None:
    """A non-empty OUT_DIR is refused as a run directory is (a model there would be replaced without a word, and a
    checkpoint's own files kept beside the new weights); --overwrite rebuilds only a folder this command wrote,
    removing what it wrote there and nothing else."""
    from mmrl.errors import UserError
    from mmrl.models.tiny import MARKER
    from mmrl.models.tiny_like import remove_earlier_build

    if not out.is_dir() or not any(out.iterdir()):
        return
    if like is not None and out.resolve() == Path(like).expanduser().resolve():
        return  # the --like folder itself: refused with its own reason by check_out
    if not overwrite:
        raise UserError(f"OUT_DIR {out} is not empty; give a new or empty directory, or --overwrite to rebuild an "
                        "earlier `mmrl model build-tiny` folder there")
    if not (out / MARKER).is_file():
        raise UserError(f"OUT_DIR {out} is not empty and holds no earlier tiny build ({MARKER}); --overwrite "
                        "replaces only a folder `mmrl model build-tiny` wrote: give a new or empty directory")
    remove_earlier_build(out)
