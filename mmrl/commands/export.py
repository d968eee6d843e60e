"""`mmrl export CHECKPOINT OUT_DIR`: a plain Hugging Face model directory from a checkpoint (LoRA merged in)."""

from __future__ import annotations

import argparse

from mmrl.commands import add_command


def register(subparsers, name: str) -> None:
    parser = add_command(
        subparsers,
        name,
        help="export a checkpoint as a plain HF model (merging LoRA)",
        description="Write a standalone model directory loadable by from_pretrained: a LoRA checkpoint is merged\n"
        "into its base model; a full checkpoint is copied without the trainer state.",
        examples="  mmrl export runs/quickstart/grpo/checkpoints/step-200 exported/quickstart\n",
    )
    parser.add_argument("checkpoint", help="a checkpoints/step-N directory")
    parser.add_argument("out_dir", help="where to write the exported model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmrl.checkpoints.store import MARKER, checkpoint_problem
    from mmrl.config.model import ModelConfig
    from mmrl.errors import UserError
    from mmrl.models.loading import load_policy
    from mmrl.models.processor import save_processor
    from mmrl.runs.directory import check_output_dir, used_run_files

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise UserError(f"checkpoint '{args.checkpoint}' is not a directory; give a checkpoints/step-N path")
    if (checkpoint / MARKER).is_file():  # an mmrl checkpoint: check it is whole before loading it
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise UserError(f"checkpoint: {problem}; export another checkpoint")
    check_output_dir(args.out_dir, "OUT_DIR")
    out = Path(args.out_dir)
    # Writing a plain model over a checkpoint (or into a run) would mix it with the files a resume reads.
    if out.resolve() == checkpoint.resolve() or (out / MARKER).is_file() or used_run_files(out):
        raise UserError(f"OUT_DIR: '{out}' holds an mmrl checkpoint or run; export into a new directory "
                        "(e.g. exported/NAME)")
    loaded = load_policy(ModelConfig(name_or_path=args.checkpoint), for_training=False)
    model = loaded.model
    merged = hasattr(model, "merge_and_unload")
    if merged:
        model = model.merge_and_unload()
    model.save_pretrained(args.out_dir, safe_serialization=True)
    save_processor(loaded.processor, args.out_dir)
    print(f"exported {'merged LoRA ' if merged else ''}model to {args.out_dir}")
    return 0
