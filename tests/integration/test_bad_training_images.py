"""Cut-short, empty and fake image files are a one-line `DataError` naming the file (and the record's file:line when
the sample came from a dataset file), from every decoder: WebP fails while opening, PNG/JPEG inside the header or
while decoding. Training data reaches the CLI as exit 2 with one line and no traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrl.config.data import DataConfig
from mmrl.data.dataset import load_samples
from mmrl.data.vision import check_images, load_image, prepare_sample_images
from mmrl.errors import DataError, UserError


def _encoded(fmt: str) -> bytes:
    pixels = (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _cut(tmp_path: Path, fmt: str, keep: float | int) -> Path:
    data = _encoded(fmt)
    size = int(len(data) * keep) if isinstance(keep, float) else keep
    path = tmp_path / f"cut-{size}.{fmt.lower()}"
    path.write_bytes(data[:size])
    return path


# Each cut fails in a different place: WebP while opening ("could not create decoder object"), PNG/JPEG cut after a
# few header bytes with "Truncated File Read" while opening, and cut in the pixel data while decoding.
@pytest.mark.parametrize(("fmt", "keep"), [
    ("WEBP", 0.5), ("WEBP", 40), ("WEBP", 20), ("PNG", 0.5), ("PNG", 20), ("JPEG", 0.5), ("JPEG", 40), ("JPEG", 12),
])
def test_cut_short_image_is_a_data_error_naming_the_file(tmp_path, fmt, keep):
    path = _cut(tmp_path, fmt, keep)
    with pytest.raises(DataError) as caught:
        load_image(str(path))
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert str(path) in message and "\n" not in message
    assert "truncated or corrupt" in message or "not a readable image" in message


def test_zero_byte_and_text_named_png_are_data_errors(tmp_path):
    empty = tmp_path / "empty.webp"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is a text file, not a PNG\n" * 50)
    with pytest.raises(DataError, match=r"empty\.webp: empty file \(0 bytes\)"):
        load_image(str(empty))
    with pytest.raises(DataError, match=r"notes\.png: not a readable image"):
        load_image(str(text))
    with pytest.raises(DataError, match="truncated or corrupt"):  # the same bytes in memory (HF image feature)
        load_image({"bytes": _encoded("WEBP")[:40], "path": None})


@pytest.fixture
def mixed_dataset(tmp_path) -> Path:
    """Good and bad images in one JSONL file: a truncated WebP on line 2."""
    good = tmp_path / "good.png"
    Image.new("RGB", (56, 56), (20, 30, 40)).save(good)
    _cut(tmp_path, "WEBP", 0.5).rename(tmp_path / "bad.webp")
    lines = [{"id": "ok", "image": "good.png", "problem": "What colour?", "answer": "red", "task": "text"},
             {"id": "broken", "image": "bad.webp", "problem": "What colour?", "answer": "red", "task": "text"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_training_sample_names_record_line_and_file(mixed_dataset):
    samples = load_samples(str(mixed_dataset))
    assert len(prepare_sample_images(samples[0], DataConfig())) == 1
    with pytest.raises(DataError) as caught:
        prepare_sample_images(samples[1], DataConfig())
    message = str(caught.value)
    assert message.startswith("sample broken (") and "train.jsonl:2" in message and "bad.webp" in message
    with pytest.raises(DataError, match=r"sample broken \(.*train\.jsonl:2\): .*bad\.webp.*on_bad_image=skip"):
        check_images(samples, DataConfig())
    kept = check_images(samples, DataConfig(on_bad_image="skip", max_bad_fraction=0.5))
    assert [s.id for s in kept] == ["ok"]  # dropped, never replaced


def test_train_cli_exits_2_with_one_line(mixed_dataset, tmp_path, capsys):
    from mmrl.cli import main

    root = Path(__file__).resolve().parents[2]
    code = main(["train", str(root / "configs" / "tests" / "grpo_tiny.yaml"), f"data.train={mixed_dataset}",
                 f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=1", "trainer.prompts_per_step=2",
                 "rollout.max_completion_length=4", "trainer.report_to=[jsonl]", "trainer.progress=false",
                 f"rewards=[{{name: '{root / 'tests' / 'fixtures' / 'trainer' / 'varied_reward.py'}:reward'}}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "Traceback" not in "\n".join(err)
    assert "bad.webp" in err[-1] and "train.jsonl:2" in err[-1] and "truncated or corrupt" in err[-1]
