"""Each peer-format fixture record loads into the right Sample (auto-detected and with an explicit format)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrl.config.data import DatasetSpec
from mmrl.data.dataset import load_datasets, load_samples
from mmrl.data.templates import build_messages
from mmrl.errors import DataError, UserError

PEER = Path(__file__).parents[1] / "fixtures" / "data" / "peer"
IMG = PEER / "images"

# file -> (format, id, answer, task, image names, prompt substring)
EXPECTED = {
    "easyr1.jsonl": ("easyr1", "easyr1:1", "12", "math", ["a.png"], "Find x"),
    "trl.jsonl": ("trl", "trl:1", "5", "number", ["a.png"], "2+3"),
    "mm_eureka.jsonl": ("mm_eureka", "mme-1", "24", "number", ["b.png"], "area"),
    "r1v.jsonl": ("r1v", "r1v:1", "2", "count", ["c.png"], "How many"),
    "curr_reft.jsonl": ("curr_reft", "curr_reft:1", "yes", "yes_no", ["c.png"], "cat"),
    "sharegpt.jsonl": ("sharegpt", "sharegpt:1", "red", "text", ["a.png"], "color"),
    "r1v_counting.jsonl": ("r1v_counting", "r1v_counting:1", "4", "count", ["a.png"], "different items"),
    "ui_r1.json": ("ui_r1", "ui_r1:0", {"action_type": "click", "x": 1027, "y": 209}, "gui", ["screen.png"], "more"),
    "mathverse.json": ("mathverse", "1", "D", "mc", [], "angle CED"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_record_loads_into_expected_sample(name):
    fmt, sid, answer, task, images, text = EXPECTED[name]
    for spec in (str(PEER / name), DatasetSpec(path=str(PEER / name), format=fmt)):
        (sample,) = load_samples(spec)
        assert sample.meta["format"] == fmt
        assert (sample.id, sample.answer, sample.task) == (sid, answer, task)
        assert [Path(p).name for p in sample.images] == images
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in sample.images)
        prompt = sample.prompt if isinstance(sample.prompt, str) else str(sample.prompt)
        assert text in prompt


def test_mathvista_multi_choice_answer_becomes_letter_with_text_kept():
    mc, free = load_samples(str(PEER / "mathvista.json"))
    assert (mc.id, mc.task, mc.answer, mc.meta["answer_text"]) == ("3", "mc", "C", "145°")
    assert mc.choices == ["135°", "140°", "145°", "150°"] and "C. 145°" in mc.prompt
    assert mc.image_size == (131, 60)
    assert (free.answer, free.task, free.meta["precision"]) == ("51.04", "number", 2)


def test_mathverse_choices_parsed_from_question():
    (sample,) = load_samples(str(PEER / "mathverse.json"))
    assert sample.choices == ["40°", "60°", "120°", "140°"] and sample.images == []


def test_vlm_r1_multi_image_order_and_iou_box():
    multi, rec = load_samples(str(PEER / "vlm_r1.jsonl"))
    assert multi.meta["format"] == "vlm_r1"
    assert [Path(p).name for p in multi.images] == ["a.png", "b.png"]
    content = build_messages(multi)[0]["content"]
    assert [p["type"] for p in content] == ["image", "image", "text"]
    assert (rec.task, rec.answer) == ("grounding", [1, 2, 30, 20])


def test_screenspot_xywh_box_becomes_xyxy_click_action():
    (sample,) = load_samples(str(PEER / "screenspot.json"))
    assert sample.task == "gui" and sample.box_format == "xyxy"
    assert sample.answer == {"action_type": "click", "bbox": [10.0, 4.0, 30.0, 12.0]}


def test_verl_parquet_with_embedded_image_bytes():
    (sample,) = load_samples(str(PEER / "verl.parquet"))
    assert (sample.answer, sample.task, sample.meta["format"]) == ("48", "math", "verl")
    assert sample.images[0].size == (32, 24)


def test_imagefolder_directory():
    (sample,) = load_samples(str(PEER / "imagefolder"))
    assert (sample.answer, Path(sample.images[0]).name) == ("yellow", "0001.png")


def test_file_uri_and_image_root(tmp_path):
    (tmp_path / "d.jsonl").write_text(f'{{"prompt": "q", "answer": "1", "images": ["file://{IMG / "a.png"}"]}}\n'
                                      '{"prompt": "q", "answer": "2", "images": ["a.png"]}\n')
    first, second = load_samples(DatasetSpec(path=str(tmp_path / "d.jsonl"), image_root=str(IMG)))
    assert first.images == [str(IMG / "a.png")] and second.images == [str(IMG / "a.png")]


def test_json_list_and_duplicate_ids_stay_unique(tmp_path):
    (tmp_path / "d.json").write_text('[{"id": "x", "prompt": "q", "answer": 3}, {"id": "x", "prompt": "q", '
                                     '"answer": "$4$"}]')
    a, b = load_samples(str(tmp_path / "d.json"))
    assert (a.id, a.answer) == ("x", "3") and b.id == "x#1" and b.answer == "4"
    both = load_datasets([DatasetSpec(path=str(tmp_path / "d.json"), weight=2.0)] * 2, None)
    assert len({s.id for s in both}) == 4 and both[0].meta["dataset_weight"] == 2.0


def _ids_of(path: Path, ids: list[str]) -> list[str]:
    path.write_text("".join(f'{{"id": "{i}", "prompt": "q", "answer": "{n}"}}\n' for n, i in enumerate(ids)))
    return [s.id for s in load_samples(str(path))]


@pytest.mark.parametrize(("given", "expected"), [
    # The repeat on line 2 would be renamed 'a#2', which line 3 holds: the data's own id stays, the repeat moves on.
    (["a", "a", "a#2"], ["a", "a#2-2", "a#2"]),
    (["a#2", "a", "a"], ["a#2", "a", "a#3"]),
    (["a", "a#3", "a"], ["a", "a#3", "a#3-2"]),
    # Ids that look like renamed ones, and their own next candidates, all taken.
    (["a", "a#2", "a#2-2", "a", "a#2-3"], ["a", "a#2", "a#2-2", "a#4", "a#2-3"]),
    (["a", "a", "a#2", "a#2-2", "a", "a#3", "a#5"], ["a", "a#2-3", "a#2", "a#2-2", "a#5-2", "a#3", "a#5"]),
    (["x", "x", "x", "x"], ["x", "x#2", "x#3", "x#4"]),
])
def test_renamed_ids_never_repeat_an_id(tmp_path, given, expected):
    ids = _ids_of(tmp_path / "d.jsonl", given)
    assert ids == expected and len(set(ids)) == len(ids)
    # Stable: loading again names every record the same.
    assert [s.id for s in load_samples(str(tmp_path / "d.jsonl"))] == expected


def test_ids_repeated_across_datasets_never_repeat_an_id(tmp_path):
    # 'd/x' is the name the second file's 'x' would get; the first file already holds it.
    (tmp_path / "one").mkdir()
    _ids_of(tmp_path / "one" / "d.jsonl", ["x", "d/x"])
    _ids_of(tmp_path / "d.jsonl", ["x", "y"])
    both = load_datasets([str(tmp_path / "one" / "d.jsonl"), str(tmp_path / "d.jsonl")], None)
    assert [s.id for s in both] == ["x", "d/x", "d/x-2", "y"]


def test_unknown_format_lists_known_ones(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"foo": 1, "bar": 2}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: unknown data format .*known formats: .*mathvista.*sharegpt"):
        load_samples(str(tmp_path / "d.jsonl"))
    with pytest.raises(UserError, match="unknown data format 'nope'; known formats: "):
        load_samples(DatasetSpec(path=str(tmp_path / "d.jsonl"), format="nope"))


def test_record_missing_answer_names_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": ""}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: record has no gold answer"):
        load_samples(str(tmp_path / "d.jsonl"))


def test_malformed_jsonl_line_reports_line_number(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", answer}\n')
    with pytest.raises(DataError, match=r"d.jsonl:3: malformed JSON"):
        load_samples(str(tmp_path / "d.jsonl"))


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_dataset(tmp_path, content):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DataError, match="empty dataset"):
        load_samples(str(tmp_path / "d.jsonl"))


def test_missing_dataset_file(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_samples(str(tmp_path / "nope.jsonl"))
