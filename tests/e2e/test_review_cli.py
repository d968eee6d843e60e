"""Adversarial review findings on the CLI: each bad input is one line, exit code 2 (in-process, fast)."""

from __future__ import annotations

import json

import pytest

from mmrl.cli import main


@pytest.fixture()
def completions(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"completion": "<answer>5</answer>", "answer": "5", "task": "math"},
            {"completion": "<answer>6</answer>", "answer": "5", "task": "count"}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--reward", "accuracy=nan"], "weight: Input should be a finite number"),  # a NaN total for every item
     (["--reward", "accuracy=inf"], "weight: Input should be a finite number"),
     (["--reward", "accuracy", "--timeout", "-1"], "--timeout -1.0: must be"),  # every item None, exit 0
     (["--reward", "accuracy", "--timeout", "0"], "--timeout 0.0: must be"),  # silently the default 5 s
     (["--reward", "accuracy", "--workers", "-2"], "--workers -2: must be"),
     (["--reward", "[{name: accuracy, weight: x}]"], "weight: Input should be a valid number")],  # was "1 validation error"
)  # fmt: skip
def test_reward_score_rejects_bad_numbers_in_one_line(completions, capsys, args, fragment):
    assert main(["reward", "score", *args, "--input", str(completions)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], captured.err


def test_a_warning_that_gets_through_the_quiet_console_is_one_line():
    # The vlm_r1_rec recipe printed mmrl's own prefix-sharing UserWarning as Python's two lines: the file:line and
    # the echoed source line `with cache_compatible(model), compute_autocast(model):`.
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("from mmrl.console import quiet_libraries\nimport warnings\nquiet_libraries()\n"
            "def f():\n    warnings.warn('prefix sharing: a note', stacklevel=2)\nf()\n")  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "warning: prefix sharing: a note\n"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [(["data", "show", "{W}/d.jsonl", "--limit", "0"], "--limit must be >= 1 (got 0)"),  # was a pydantic traceback
     (["data", "show", "{W}/d.jsonl", "--limit", "-1"], "--limit must be >= 1 (got -1)"),
     # was killed for memory drawing 100000 x 100000 canvases
     (["build-data", "synthetic", "--tasks", "color", "--n", "2", "--image-size", "100000", "--out", "{W}/o"],
      "28 <= image_size <= 4096")],
)  # fmt: skip
def test_absurd_sizes_and_limits_are_one_line(tmp_path, capsys, argv, fragment):
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "q", "answer": "5"}) + "\n")
    assert main([a.replace("{W}", str(tmp_path)) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("images", [[None, "img.png"], ["", "img.png"], ["img.png", None]])
def test_an_empty_entry_in_a_records_images_is_an_error_not_dropped(tmp_path, capsys, images):
    # `images: [null, "img.png"]` passed `data check` as one image: the null was skipped silently.
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "img.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "prompt": "q", "answer": "5", "images": images}) + "\n")
    assert main(["data", "check", str(tmp_path / "d.jsonl")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "d.jsonl:1: image" in lines[0] and "is empty" in lines[0], lines
