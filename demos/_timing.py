"""How long each demo takes to start and to answer, as a user sees it: `start` runs from launching the process
`mmrl demo NAME ...` to its page answering HTTP 200 (imports, model load, app build, server up), `answer` is one request
through Gradio's own HTTP client (the handler the page calls: greedy, `--max-new-tokens` tokens, a 640x480 image).
`python -m demos._timing --presets tiny small --device cpu`.

Before the timed request each server also gets one bad request (a non-image, an off-image gold, a malformed gold...)
and must answer it with a message: the timed answer then shows that it kept serving.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

MODEL_DEMOS = ("chat", "grounding", "gui")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(folder: Path) -> tuple[Path, Path, Path]:
    """(a 640x480 scene with a red box at [100, 120, 300, 360], a text file named .png, a two-stage run directory)."""
    scene = folder / "scene.png"
    image = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(image).rectangle([100, 120, 300, 360], fill="red")
    image.save(scene)
    notes = folder / "notes.png"
    notes.write_text("not an image")
    run = folder / "run"
    (run / "samples").mkdir(parents=True)
    rows = [{"step": s, "stage": int(s > 50), "reward/total": s / 100, "reward/accuracy": s / 200, "kl": s / 1000,
             "entropy": 5.0, "completion_length/mean": 40 + s % 7, "loss": 0.1} for s in range(1, 101)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sample = {"id": "a", "completion": "<answer>1</answer>", "reward": 1.0}
    (run / "samples" / "step-100.jsonl").write_text(json.dumps(sample) + "\n")
    return scene, notes, run


def _requests(demo: str, scene: Any, notes: Any, max_new_tokens: int) -> tuple[tuple, tuple, str]:
    """(bad request args, timed request args, api name) of one demo."""
    sampling = (0.0, 1.0, 0, max_new_tokens, 0)  # temperature (greedy), top-p, top-k, max new tokens, seed
    auto = "auto (the model's own)"
    template = (None, None)  # system prompt, suffix: the model's own
    return {
        "chat": ((notes, "How many red boxes?", "", "math", "", *template, *sampling),
                 (scene, "How many red boxes?", "1", "count", "", *template, *sampling), "/run"),
        "grounding": ((scene, "the red box", auto, "[5000, 5000, 6000, 6000]", *template, *sampling),
                      (scene, "the red box", auto, "[100, 120, 300, 360]", *template, *sampling), "/run"),
        "gui": ((scene, "tap the red button", '{"action_type": "click", "bbox": [1, 2]}', *template, *sampling),
                (scene, "tap the red button", "[100, 120, 300, 360]", *template, *sampling), "/run"),
        "rewards": (("<answer>x</answer>", "click it", "gui", "", "", None),
                    ("<think>half</think><answer>\\frac{1}{2}</answer>", "0.5", "math", "", "", None), "/run"),
        "runs": (("100", 99), ("stage 1",), None),
    }[demo]  # fmt: skip


def time_one(demo: str, preset: str, max_new_tokens: int, device: str) -> dict:
    """Start and answer seconds of one demo, served by its own `mmrl demo` process."""
    from gradio_client import Client, handle_file

    folder = Path(tempfile.mkdtemp(prefix="mmrl-demo-timing-"))
    scene, notes, run = _files(folder)
    port = _port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "mmrl", "demo", demo, "--port", str(port)]
    command += ["--model", preset, "--device", device] if demo in MODEL_DEMOS else [str(run)] if demo == "runs" else []
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(command[1:])} exited: {proc.stdout.read()[-300:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as page:
                    if page.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        started = time.monotonic() - start
        client = Client(url, verbose=False)
        bad, good, api = _requests(demo, handle_file(str(scene)), handle_file(str(notes)), max_new_tokens)
        bad_status = client.predict(*bad, api_name=api or "/on_index")[0]
        start = time.monotonic()
        good_status = client.predict(*good, api_name=api or "/on_stage")[0]
        answered = time.monotonic() - start
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"demo": demo, "preset": preset if demo in MODEL_DEMOS else "-", "start_s": round(started, 1),
            "answer_s": round(answered, 2), "bad_request": str(bad_status)[:100], "answer": str(good_status)[:100]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--demos", nargs="+", default=[*MODEL_DEMOS, "rewards", "runs"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    jobs = [(d, p) for p in args.presets for d in args.demos if d in MODEL_DEMOS]
    jobs += [(d, "-") for d in args.demos if d not in MODEL_DEMOS]
    print(f"| demo | preset | start (s) | answer (s, {args.max_new_tokens} new tokens greedy) | load (1 min) |")
    print("|---|---|---|---|---|")
    for demo, preset in jobs:
        load = os.getloadavg()[0]
        try:
            row = time_one(demo, preset, args.max_new_tokens, args.device)
        except Exception as err:  # noqa: BLE001  (one failed demo is a row, the others still run)
            print(f"| {demo} | {preset} | failed: {str(err).splitlines()[0][:120]} | | |", flush=True)
            continue
        print(f"| {demo} | {row['preset']} | {row['start_s']} | {row['answer_s']} | {load:.1f} |", flush=True)
        print(f"<!-- bad request: {row['bad_request']!r}; answer: {row['answer']!r} -->", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
