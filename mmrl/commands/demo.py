"""`mmrl demo NAME`: the Gradio demos in `demos/` (chat, grounding, gui, rewards, runs); needs the `demo` extra."""

from __future__ import annotations

import argparse
import importlib

from mmrl.commands import add_command
from mmrl.errors import UserError

EXAMPLES = """  mmrl demo chat --model tiny                      # image + question, streamed reasoning and answer
  mmrl demo grounding --model REC_RUN/checkpoints/step-200 --frame norm1000   # a grounding run (recipes)
  mmrl demo gui --model tiny                       # screenshot + instruction -> UI-R1 action
  mmrl demo rewards                                # reward playground, no model
  mmrl demo runs runs/quickstart/grpo              # curves and samples of a run (the quickstart's GRPO step)
  mmrl demo chat --model small --host 0.0.0.0 --port 7860   # reachable from other machines: you chose it
Install the demo extra first: pip install -e ".[demo]". Each demo serves on 127.0.0.1 (no share link) unless --host
says otherwise; open the printed URL in a browser.
"""

MODEL_DEMOS = ("chat", "grounding", "gui")


def _demos() -> dict[str, tuple[str, str]]:
    from demos import DEMOS

    return DEMOS


def register(subparsers, name: str) -> None:
    try:
        demos = _demos()
    except ImportError:  # installed without the demos folder: the command still lists itself and says why
        demos = {}
    parser = add_command(subparsers, name, "launch a Gradio demo (chat, grounding, gui, rewards, runs)",
                         "Launch one of the Gradio demos (mmrl demo NAME --help for its options).", EXAMPLES)
    sub = parser.add_subparsers(dest="demo", metavar="NAME")
    for demo_name, (_, description) in demos.items():
        one = sub.add_parser(demo_name, help=description, description=description,
                             epilog="examples:\n" + "\n".join(line for line in EXAMPLES.splitlines()
                                                          if f"mmrl demo {demo_name} " in line + " "),
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        if demo_name in MODEL_DEMOS:
            one.add_argument("--model", default=None,
                             help="checkpoint directory, preset (tiny, small) or OpenAI-compatible http://host/v1 URL "
                                  "(default: tiny)")  # fmt: skip
            one.add_argument("model_path", nargs="?", default=None, metavar="MODEL",
                             help="the same as --model (as `mmrl demo runs RUN_DIR` takes its folder)")
            one.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
        if demo_name == "grounding":
            one.add_argument("--frame", default="auto", choices=["auto", "input_pixel", "norm1000", "pixel", "norm1"],
                             help="frame the model writes boxes in (auto: from the model's config, Qwen2-VL and "
                                  "Qwen3-VL norm1000, Qwen2.5-VL input pixels); changeable in the page")  # fmt: skip
        if demo_name == "runs":
            one.add_argument("run_dir", help="run directory (metrics.jsonl, samples/)")
        one.add_argument("--host", default="127.0.0.1",
                         help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
        one.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
        one.set_defaults(func=run)
    parser.set_defaults(func=lambda args: _choose(demos))


def _choose(demos: dict) -> int:
    names = ", ".join(demos) or "none (the demos/ folder is not installed)"
    raise UserError(f"name a demo: {names}; e.g. `mmrl demo rewards` (`mmrl demo --help` shows examples)")


def build(args: argparse.Namespace):
    """The Gradio app of `args.demo`, built from the parsed arguments."""
    module_name = _demos()[args.demo][0]
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError('the demos need Gradio: pip install -e ".[demo]"') from None
    module = importlib.import_module(module_name)
    if args.demo in MODEL_DEMOS:
        from demos._model import DemoModel

        given = [m for m in (args.model_path, args.model) if m is not None]
        if len({m.rstrip("/") or m for m in given}) > 1:
            raise UserError(f"--model: two models given ({args.model_path!r} and --model {args.model!r}); name one")
        args.model = given[0] if given else "tiny"

        try:
            model = DemoModel.load(args.model, device=args.device)
        except UserError as err:  # the loader names a config key; the demo's user typed --model
            raise UserError(str(err).replace("model.name_or_path", "--model")) from None
        if args.demo == "grounding":
            return module.build_app(model, frame=args.frame)
        return module.build_app(model)
    if args.demo == "runs":
        return module.build_app(args.run_dir)
    return module.build_app()


def run(args: argparse.Namespace) -> int:
    from demos._common import launch

    app = build(args)
    launch(app, host=args.host, port=args.port, prevent_thread_lock=True)
    where = "this machine only" if args.host in ("127.0.0.1", "localhost") else f"every host that reaches {args.host}"
    print(f"mmrl demo {args.demo}: {app.local_url} ({where}; Ctrl-C stops it)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
