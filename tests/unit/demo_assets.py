"""Test images and run directories for the demo tests (test_demo_inputs.py, test_demo_views.py,
test_demo_runs.py)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw


def good_image(path: Path, size=(160, 120)) -> Path:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([20, 30, 80, 90], fill="blue")
    image.save(path)
    return path


def huge_png(path: Path, side: int = 10_000) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def make_run(root: Path) -> Path:
    run = root / "run"
    (run / "samples").mkdir(parents=True)
    rows = [{"step": s, "stage": int(s > 3), "stage_name": "warm" if s <= 3 else "hard", "reward/total": s / 10,
             "reward/accuracy": s / 20, "kl": 0.01 * s, "entropy": 5.0, "loss/clip_frac_high": 0.1}
            for s in range(1, 7)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    good_image(run / "a.png")
    sample = {"id": "a", "answer": "1", "completion": "x" * 1000, "reward": 1.0, "advantage": 0.0,
              "reward/accuracy": 1.0, "images": ["a.png", "gone.png"]}  # fmt: skip
    (run / "samples" / "step-6.jsonl").write_text(json.dumps(sample) + "\n")
    (run / "samples" / "step-2.jsonl").write_text("not json\n")
    return run


def noise_png(path: Path, side: int = 300) -> tuple[bytes, list[tuple[int, bytes, int]]]:
    """A PNG of random pixels (several IDAT chunks) and its chunks as (offset, type, length)."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data, pos, chunks = path.read_bytes(), 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        chunks.append((pos, data[pos + 4 : pos + 8], length))
        pos += 12 + length
    return data, chunks



# ---------------------------------------------------------------- a trained checkpoint
COLOURS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 50), "yellow": (235, 200, 20)}
COLOUR_QUESTION = "What color is the square?"
# Not R1's prompt, and a suffix: a demo that drops or replaces the run's template shows a prompt this model never saw.
COLOUR_SYSTEM = "Say what colour the square is: a short thought inside <think> </think>, then the colour inside " \
                "<answer> </answer>."
COLOUR_SUFFIX = " One word."


def colour_square(path: Path, colour: str, seed: int, side: int = 56) -> Path:
    """A square of `colour` filling most of a white `side`-pixel image, its margins drawn from `seed`."""
    import random

    rng = random.Random(seed)
    image = Image.new("RGB", (side, side), "white")
    margins = [rng.randint(0, side // 8) for _ in range(4)]
    ImageDraw.Draw(image).rectangle([margins[0], margins[1], side - 1 - margins[2], side - 1 - margins[3]],
                                    fill=COLOURS[colour])
    image.save(path)
    return path


def train_colour_checkpoint(root: Path, steps: int = 80) -> Path:
    """A real mmrl checkpoint that answers `COLOUR_QUESTION`: the `tiny` preset SFT-ed by `mmrl.sft.train_sft` with
    `COLOUR_SYSTEM` and `COLOUR_SUFFIX` on 64 squares of 4 colours (56 px, as the quickstart's images). Returns
    `<root>/run/checkpoints/step-<steps>`; the run's config.yaml sits next to `checkpoints/`, as after `mmrl sft`.

    Why not the quickstart: its `small` model needs minutes of SFT and GRPO. Why not the synthetic colour task: tiny
    answers one colour for every shape on white after 120 steps. A square filling the image it learns suddenly: greedy
    answers to 16 held-out squares were right 8 times at steps 40 and 60 (two colours merged), 16 at 80 and 100.
    """
    import json

    from mmrl.config import load_config
    from mmrl.sft.trainer import train_sft

    data = root / "data"
    (data / "images").mkdir(parents=True)
    lines = []
    for i in range(64):
        colour = list(COLOURS)[i % len(COLOURS)]
        colour_square(data / "images" / f"{i}.png", colour, seed=i)
        lines.append(json.dumps({"id": f"sq-{i}", "images": [f"images/{i}.png"], "prompt": COLOUR_QUESTION,
                                 "answer": colour, "response": f"<think> The square is {colour}. </think>"
                                                               f"<answer> {colour} </answer>"}))
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    settings = {"model.name_or_path": "tiny", "model.freeze_vision_tower": True, "data.train": str(data / "train.jsonl"),
                "data.min_pixels": 3136, "data.max_pixels": 3136, "trainer.output_dir": str(root / "run"),
                "trainer.report_to": "[jsonl]", "trainer.progress": False, "trainer.batch_size": 8,
                "trainer.max_steps": steps, "optimizer.lr": 2e-3, "trainer.seed": 0}
    overrides = [f"{k}={v}" for k, v in settings.items()]
    # Given apart: an override's value is parsed as YAML, and the prompt's ': ' would make it a mapping.
    cfg = load_config(None, overrides).model_copy(deep=True)
    cfg.data.system_prompt, cfg.data.prompt_suffix = COLOUR_SYSTEM, COLOUR_SUFFIX
    import torch

    # One thread: tiny's matmuls are too small to share, and on a busy machine a second thread's waiting spins (the
    # suite's two threads made this training take 10x the CPU time on 2 cores with a load of 15).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_sft(cfg) / "checkpoints" / f"step-{steps}"
    finally:
        torch.set_num_threads(threads)


QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def train_quickstart_checkpoint(root: Path) -> Path:
    """The quickstart's own cold-start checkpoint: `configs/quickstart.yaml`'s data step (its builder arguments) and
    its `sft` step as configured (24 steps of the `small` model, the config the pipeline gives it), run here without
    the evals and GRPO. Returns `<root>/sft/checkpoints/step-24`, next to the run's config.yaml as after the pipeline.

    Why stop after SFT: GRPO needs minutes to add anything (8 steps of it, ~50 s on a loaded 2-core machine, left
    greedy accuracy on 12 held-out shapes at 9/12, as after SFT). The SFT step alone takes ~25-50 s there.
    """
    import torch

    from data_pipelines.synthetic import build_synthetic
    from mmrl.sft.trainer import train_sft
    from mmrl.workflow.plan import load_plan, step_config

    plan = load_plan(QUICKSTART, [f"output_dir={root}"])
    data_args = next(step for step in plan.steps if step.kind == "build-data").args
    train = build_synthetic(data_args["tasks"], data_args["n"], data_args["seed"], root / "data",
                            forms=data_args["forms"], image_size=data_args["image_size"], split="train")
    sft = next(step for step in plan.steps if step.kind == "sft")
    cfg = step_config(plan, sft, {"data.train": [str(train)]})
    quiet = {"progress": False, "report_to": ["jsonl"], "resume": None}
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update=quiet)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see train_colour_checkpoint: tiny matmuls, a busy machine
    try:
        return train_sft(cfg) / "checkpoints" / f"step-{cfg.trainer.max_steps}"
    finally:
        torch.set_num_threads(threads)


def quickstart_question(root: Path, colour: str) -> tuple[Path, str]:
    """(image, question) of a held-out item of the quickstart's task whose gold is `colour`: one shape on white,
    drawn by the quickstart's builder with another seed than its training data."""
    import json

    from data_pipelines.synthetic import build_synthetic

    found = build_synthetic(["color"], 8, 1, root, forms=["open"], image_size=56, split="eval")
    for line in found.read_text().splitlines():
        item = json.loads(line)
        if item["answer"] == colour:
            return found.parent / item["images"][0], item["prompt"]
    raise AssertionError(f"no {colour} item among the first 8 held-out items")
