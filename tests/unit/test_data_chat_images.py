"""Chat records never lose an image: `image_url` parts (path, file://, data: URL), TRL's top-level `images` beside
inline parts, and parts mmrl cannot read are rejected by name instead of dropped."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmrl.cli import main
from mmrl.data.dataset import load_samples
from mmrl.data.templates import build_messages
from mmrl.data.vision import load_image
from mmrl.errors import DataError


def _png(path: Path, size=(40, 30), color=(200, 0, 0)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _data_url(size=(24, 12)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 0, 255)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _trl(parts: list, **extra) -> dict:
    return {"prompt": [{"role": "user", "content": parts}], "solution": "3", **extra}


TEXT = {"type": "text", "text": "How many?"}


def _load(tmp_path: Path, *records: dict) -> list:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return load_samples(str(path))


def _sizes(sample) -> list[tuple[int, int]]:
    return [load_image(im).size for im in sample.images]


@pytest.fixture()
def images(tmp_path) -> dict[str, Path]:
    return {"a": _png(tmp_path / "a.png", (40, 30)), "b": _png(tmp_path / "b.png", (50, 20))}


def test_image_url_parts_path_file_uri_and_data_url_are_read(tmp_path, images):
    records = [
        _trl([{"type": "image_url", "image_url": {"url": "a.png"}}, TEXT]),
        _trl([{"type": "image_url", "image_url": {"url": f"file://{images['b']}"}}, TEXT]),
        _trl([{"type": "image_url", "image_url": {"url": _data_url()}}, TEXT]),
        _trl([{"type": "image", "image": _data_url((30, 60))}, {"type": "image_url", "image_url": "a.png"}, TEXT]),
    ]
    samples = _load(tmp_path, *records)
    assert [_sizes(s) for s in samples] == [[(40, 30)], [(50, 20)], [(24, 12)], [(30, 60), (40, 30)]]
    for sample in samples:
        parts = build_messages(sample)[0]["content"]
        assert sum(p["type"] == "image" for p in parts) == len(sample.images)
    assert samples[2].to_json()["images"] == ["<embedded image 24x12>"]


def test_trl_top_level_images_fill_empty_slots_in_order(tmp_path, images):
    (both,) = _load(tmp_path, _trl([{"type": "image"}, TEXT, {"type": "image"}], images=["b.png", "a.png"]))
    assert [Path(p).name for p in both.images] == ["b.png", "a.png"]
    (mixed,) = _load(tmp_path, _trl([{"type": "image", "image": "a.png"}, {"type": "image"}, TEXT], images=["b.png"]))
    assert [Path(p).name for p in mixed.images] == ["a.png", "b.png"]
    (same,) = _load(tmp_path, _trl([{"type": "image", "image": "a.png"}, TEXT], images=["a.png"]))
    assert [Path(p).name for p in same.images] == ["a.png"]


@pytest.mark.parametrize(("parts", "extra", "message"), [
    ([{"type": "image", "image": "a.png"}, TEXT], {"images": ["b.png"]}, "keep one of the two lists"),
    ([{"type": "image"}, {"type": "image"}, TEXT], {"images": ["a.png"]}, "2 image slot(s) without a path"),
    ([{"type": "image"}, TEXT], {}, "1 image slot(s) without a path but the record's image field lists 0"),
    ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, TEXT], {},
     "remote images are not fetched; download them first"),
    ([{"type": "image", "image": "http://example.com/cat.png"}, TEXT], {}, "remote images are not fetched"),
    ([{"type": "video", "video": "clip.mp4"}, TEXT], {}, "video inputs are not supported"),
    ([{"type": "video_url", "video_url": {"url": "file:///clip.mp4"}}, TEXT], {}, "video inputs are not supported"),
    ([{"type": "input_audio", "input_audio": {"data": "..."}}, TEXT], {}, "type 'input_audio' is not supported"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, TEXT], {}, "invalid base64"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, TEXT], {}, "is not base64"),
])
def test_unreadable_image_parts_reject_the_record_by_line(tmp_path, images, parts, extra, message):
    good = _trl([{"type": "image", "image": "a.png"}, TEXT])
    with pytest.raises(DataError) as info:
        _load(tmp_path, good, good, _trl(parts, **extra), good)
    assert str(info.value).startswith(f"{tmp_path / 'd.jsonl'}:3: ") and message in str(info.value)


def test_remote_image_is_not_reported_as_a_missing_local_file(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text(json.dumps(
        {"prompt": "<image>What is it?", "answer": "cat", "images": ["https://example.com/a/cat.png"]}) + "\n")
    assert main(["data", "check", str(tmp_path / "d.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "remote images are not fetched; download them first" in err and "not found" not in err


def test_mm_eureka_and_sharegpt_image_url_parts(tmp_path, images):
    message = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file://a.png"}},
                                            {"type": "text", "text": "Area?"}]}]
    sharegpt = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url()}},
                                                          {"type": "text", "text": "Colour?"}]},
                             {"role": "assistant", "content": "blue"}]}
    (eureka,) = _load(tmp_path, {"id": "m", "message": json.dumps(message), "answer": "24"})
    assert eureka.meta["format"] == "mm_eureka" and [Path(p).name for p in eureka.images] == ["a.png"]
    (chat,) = _load(tmp_path, sharegpt)
    assert chat.meta["format"] == "sharegpt" and _sizes(chat) == [(24, 12)] and chat.answer == "blue"


def test_corrupt_data_url_image_is_a_check_error(tmp_path, capsys):
    url = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    (tmp_path / "d.jsonl").write_text(json.dumps(_trl([{"type": "image_url", "image_url": {"url": url}}, TEXT])) + "\n")
    assert main(["data", "check", str(tmp_path / "d.jsonl")]) == 2
    assert "d.jsonl:1: sample d:1: image 0: " in capsys.readouterr().err


def test_hf_image_dict_part_prefers_its_bytes(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (21, 13)).save(buf, format="PNG")
    part = {"type": "image", "image": {"bytes": buf.getvalue(), "path": "not/here.png"}}
    record = {"prompt": [{"role": "user", "content": [part, TEXT]}], "solution": "3"}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([record]), tmp_path / "d.parquet")
    (sample,) = load_samples(str(tmp_path / "d.parquet"))
    assert _sizes(sample) == [(21, 13)]


def test_load_image_names_a_remote_url_as_remote():
    with pytest.raises(DataError, match="remote images are not fetched; download them first"):
        load_image("https://example.com/cat.png")
