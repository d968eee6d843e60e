"""How long each demo takes to start (model load + app build + server up) and to answer one request (the handler the
page calls, greedy, `--max-new-tokens` tokens). `python -m demos._timing --presets tiny small`.

Each model demo is timed in a fresh process, so the model load is counted, not served from the cache.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image(folder: Path) -> str:
    image = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(image).rectangle([100, 120, 300, 360], fill="red")
    path = folder / "scene.png"
    image.save(path)
    return str(path)


def time_one(demo: str, preset: str, max_new_tokens: int, device: str) -> dict:
    """Start and answer seconds of one demo (in this process)."""
    from demos._common import launch
    from demos._model import DemoModel, Sampling

    folder = Path(tempfile.mkdtemp(prefix="mmrl-demo-timing-"))
    image = _image(folder)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    if demo in ("chat", "grounding", "gui"):
        model = DemoModel.load(preset, device=device)
        module = __import__(f"demos.{demo}", fromlist=["build_app"])
        app = module.build_app(model)
    elif demo == "rewards":
        from demos.rewards import build_app

        app = build_app()
    else:
        from demos.runs import build_app

        run = folder / "run"
        (run / "samples").mkdir(parents=True)
        rows = [{"step": s, "stage": int(s > 50), "reward/total": s / 100, "kl": s / 1000, "entropy": 5.0}
                for s in range(1, 101)]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        app = build_app(run)
    launch(app, port=_port(), prevent_thread_lock=True)
    started = time.perf_counter() - start
    start = time.perf_counter()
    if demo == "chat":
        from demos.chat import chat_stream

        list(chat_stream(model, image, "How many red rectangles are there?", sampling, "1", "count"))
    elif demo == "grounding":
        from demos.grounding import locate

        locate(model, image, "the red rectangle", "auto", "[100, 120, 300, 360]", sampling)
    elif demo == "gui":
        from demos.gui import act

        act(model, image, "tap the red button", "[100, 120, 300, 360]", sampling)
    elif demo == "rewards":
        from demos.rewards import score_table

        score_table("<think>half</think><answer>\\frac{1}{2}</answer>", "0.5", "math")
    else:
        from demos.runs import curves, load_run

        curves(load_run(folder / "run").rows, "stage 1")
    answered = time.perf_counter() - start
    app.close()
    return {"demo": demo, "preset": preset if demo in ("chat", "grounding", "gui") else "-",
            "start_s": round(started, 2), "answer_s": round(answered, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", nargs=2, metavar=("DEMO", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(time_one(args.one[0], args.one[1], args.max_new_tokens, args.device)))
        return
    jobs = [(d, p) for p in args.presets for d in ("chat", "grounding", "gui")] + [("rewards", "-"), ("runs", "-")]
    print(f"| demo | preset | start (s) | answer (s, {args.max_new_tokens} new tokens greedy) |\n|---|---|---|---|")
    for demo, preset in jobs:
        out = subprocess.run([sys.executable, "-m", "demos._timing", "--one", demo, preset, "--max-new-tokens",
                              str(args.max_new_tokens), "--device", args.device], capture_output=True, text=True)  # fmt: skip
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            print(f"| {demo} | {preset} | failed: {out.stderr.strip().splitlines()[-1:]} | |")
            continue
        row = json.loads(lines[-1])
        print(f"| {row['demo']} | {row['preset']} | {row['start_s']} | {row['answer_s']} |")


if __name__ == "__main__":
    main()
