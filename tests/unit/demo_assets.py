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

