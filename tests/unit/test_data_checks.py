"""`mmrl data check` and the trainers' data gate: everything that would crash or mislead training is found first.

Hostile files mix good and bad records; every bad one must be named by file:line and sample id, no good one may be.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from mmrl.cli import main
from mmrl.config import load_config
from mmrl.config.data import DataConfig
from mmrl.data.checks import check_for_training, check_samples
from mmrl.data.dataset import load_samples
from mmrl.errors import DataError
from mmrl.rewards.gold_check import gold_check

ROOT = Path(__file__).resolve().parents[2]
PEER_RECORDS = json.loads((ROOT / "tests" / "fixtures" / "data" / "peer_records.json").read_text())


def _png(path: Path, size: tuple[int, int]) -> str:
    Image.new("RGB", size, (180, 180, 180)).save(path)
    return path.name


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _check(capsys, *args) -> tuple[int, list[str], str]:
    code = main(["data", "check", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def _lines_for(err: list[str], sample_id: str) -> list[str]:
    return [line for line in err if f": sample {sample_id}: " in line]


# One hostile file: each bad record breaks one rule; the good ones sit between them.
GOOD = {
    "good-count": {"prompt": "<image>How many?", "answer": "3", "task": "count"},
    "good-box": {"prompt": "Where is it?", "answer": [5, 5, 30, 30], "task": "grounding"},
    "good-edge-box": {"prompt": "Where is it?", "answer": [0, 0, 65, 49], "task": "grounding"},  # within 1 px
    "good-mc": {"prompt": "Which?\nA. cat\nB. dog", "answer": "B", "task": "mc", "choices": ["cat", "dog"]},
}
BAD = {  # id -> (record fields, a phrase the error must contain)
    "two-slots": ({"prompt": "<image> vs <image>", "answer": "3", "task": "count"}, "2 <image> placeholders but 1"),
    "half-count": ({"prompt": "How many?", "answer": "2.5", "task": "count"}, "reward 'accuracy' cannot score"),
    "maybe": ({"prompt": "Is it red?", "answer": "maybe", "task": "yes_no"}, "reward 'accuracy' cannot score"),
    "words-math": ({"prompt": "Solve.", "answer": "forty two", "task": "math"}, "reward 'accuracy' cannot score"),
    "five-grounding": ({"prompt": "Where?", "answer": [1, 2, 3, 4, 5], "task": "grounding"}, "has 5 numbers"),
    "five-untyped": ({"prompt": "Where?", "answer": [1, 2, 3, 4, 5]}, "has 5 numbers"),
    "nan-box": ({"prompt": "Where?", "answer": [1, float("nan"), 3, 4], "task": "grounding"}, "non-finite"),
    "flipped": ({"prompt": "Where?", "answer": [50, 10, 20, 30], "task": "grounding"}, "x1 > x2"),
    "outside": ({"prompt": "Where?", "answer": [10, 10, 67, 40], "task": "grounding"}, "outside the 64x48 image"),
    "norm1-as-pixel": ({"prompt": "Where?", "answer": [0.1, 0.2, 0.5, 0.6], "task": "grounding"},
                       "declare box_frame: norm1"),
    "text-as-box": ({"prompt": "Where?", "answer": "top left", "task": "grounding"}, "is not a box"),
    "bogus-frame": ({"prompt": "Where?", "answer": [1, 2, 3, 4], "task": "grounding", "box_frame": "percent"},
                    "unknown box_frame 'percent'"),
}


@pytest.fixture()
def hostile(tmp_path) -> Path:
    image = _png(tmp_path / "img.png", (64, 48))
    records = []
    for (good_id, good), (bad_id, (bad, _)) in zip(list(GOOD.items()) * 3, BAD.items()):
        records.append({"id": good_id + f"-{len(records)}", **good, "images": [image]})
        records.append({"id": bad_id, **bad, "images": [image]})
    return _jsonl(tmp_path / "mixed.jsonl", records)


def test_hostile_file_every_bad_record_named_by_line_and_id(hostile, capsys):
    code, err, out = _check(capsys, hostile)
    assert code == 2
    lines = {json.loads(line)["id"]: n for n, line in enumerate(hostile.read_text().splitlines(), start=1)}
    for sample_id, (_, phrase) in BAD.items():
        found = _lines_for(err, sample_id)
        assert len(found) == 1, (sample_id, err)
        assert found[0].startswith(f"error: {hostile}:{lines[sample_id]}: sample {sample_id}: ")
        assert phrase in found[0], (phrase, found[0])
    assert not [line for line in err if ": sample good-" in line]
    assert f"{len(BAD)} errors in {len(BAD)} samples" in out


def test_five_numbers_stay_numbers_not_five_text_golds(hostile):
    samples = {s.id: s for s in load_samples(str(hostile))}
    assert samples["five-untyped"].answer == [1, 2, 3, 4, 5]
    assert samples["five-untyped"].task != "grounding"  # and the check above rejects it anyway


def test_warnings_are_listed_and_exit_0(tmp_path, capsys):
    image = _png(tmp_path / "img.png", (64, 48))
    data = _jsonl(tmp_path / "d.jsonl", [
        {"id": "custom", "prompt": "q", "answer": "x", "task": "mytask", "images": [image]},
        {"id": "resized", "prompt": "q", "answer": "3", "task": "count", "images": [image], "image_size": [640, 480]},
        {"id": "fine", "prompt": "q", "answer": "3", "task": "count", "images": [image]},
    ])
    code, err, out = _check(capsys, data)
    assert code == 0
    assert "no built-in reward scores task 'mytask'" in _lines_for(err, "custom")[0]
    assert "declared image_size (640, 480) differs" in _lines_for(err, "resized")[0]
    assert all(line.startswith("warning: ") for line in err) and not _lines_for(err, "fine")
    assert "0 errors in 0 samples, 2 warnings" in out


def _config(tmp_path: Path, name: str, data: Path, rewards: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"data:\n  train: {data}\nrewards: {rewards}\n")
    return path


def test_config_checks_golds_against_the_runs_rewards(tmp_path, capsys):
    image = _png(tmp_path / "img.png", (64, 48))
    data = _jsonl(tmp_path / "d.jsonl", [
        {"id": "colour", "prompt": "What colour?", "answer": "red", "images": [image]},
        {"id": "box", "prompt": "Where?", "answer": [1, 2, 30, 40], "images": [image]},
    ])
    assert _check(capsys, data)[0] == 0  # by task: accuracy scores both
    iou = _config(tmp_path, "iou", data, "[{name: iou}]")
    code, err, _ = _check(capsys, "--config", iou)
    assert code == 2
    assert "reward 'iou' cannot score the gold \"red\"" in _lines_for(err, "colour")[0]
    assert not _lines_for(err, "box")
    code, err, _ = _check(capsys, data, "--config", iou)  # a named dataset, checked against the config's rewards
    assert code == 2 and len(err) == 1
    fmt = _config(tmp_path, "fmt", data, "[{name: format}, {name: iou, weight: 0}]")
    assert _check(capsys, "--config", fmt)[0] == 0  # format ignores the gold; a zero-weight reward never blocks


def test_real_screenspot_records_boxes_in_their_declared_frames(tmp_path, capsys):
    records = []
    for item in PEER_RECORDS["screenspot"]:
        rec = item["record"]
        image = _png(tmp_path / rec["image_file"], tuple(rec["image_size_[w,h]"]))
        base = {"prompt": rec["instruction"], "task": "grounding", "images": [image]}
        records += [
            {"id": f"{image}-pixel", **base, "answer": rec["bbox_pixel_[x1,y1,x2,y2]"]},
            {"id": f"{image}-norm1", **base, "answer": rec["bbox_normalized_[x1,y1,x2,y2]"], "box_frame": "norm1"},
            {"id": f"{image}-norm1-as-pixel", **base, "answer": rec["bbox_normalized_[x1,y1,x2,y2]"]},
        ]
    code, err, _ = _check(capsys, _jsonl(tmp_path / "screenspot.jsonl", records))
    assert code == 2
    bad = {line.split(": sample ")[1].split(":")[0] for line in err}
    assert bad == {"item1.png-norm1-as-pixel", "item2.png-norm1-as-pixel"}
    assert all("every coordinate <= 1" in line and "box_frame: norm1" in line for line in err)


def test_real_refcoco_norm1000_solution_declared_as_pixels(tmp_path, capsys):
    image = _png(tmp_path / "coco.png", (320, 240))
    solution = PEER_RECORDS["refcoco_solution"]["solution"]
    base = {"prompt": "the man on the left", "answer": solution, "task": "grounding", "images": [image]}
    data = _jsonl(tmp_path / "rec.jsonl", [{"id": "as-pixel", **base},
                                           {"id": "as-norm1000", **base, "box_frame": "norm1000"}])
    code, err, _ = _check(capsys, data)
    assert code == 2 and len(err) == 1
    assert "outside the 320x240 image" in err[0] and "box_frame: norm1000" in err[0] and "as-pixel" in err[0]


def test_real_vlm_r1_multi_image_record_missing_screenshot(tmp_path, capsys):
    record = dict(PEER_RECORDS["vlm_r1_multi_image"]["record"])
    first, second = record["image"]
    _png(tmp_path / first, (54, 96))
    data = _jsonl(tmp_path / "gui.jsonl", [record])
    code, err, _ = _check(capsys, data)
    assert code == 2 and len(err) == 1
    assert "gui.jsonl:1: sample 1: image 1:" in err[0] and second in err[0] and "not found" in err[0]
    _png(tmp_path / second, (54, 96))
    assert _check(capsys, data)[0] == 0


def test_check_writes_nothing(hostile):
    before = sorted(p.name for p in hostile.parent.iterdir())
    report = check_samples(load_samples(str(hostile)), DataConfig(), gold_check(None))
    assert len(report.errors) == len(BAD)
    assert sorted(p.name for p in hostile.parent.iterdir()) == before


def test_training_gate_raises_first_error_with_location(hostile):
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: sample two-slots: .*\(and \d+ more; `mmrl data check`"):
        check_for_training(load_samples(str(hostile)), DataConfig(), gold_check(None))


def test_training_gate_skips_bad_images_only_when_asked(tmp_path):
    good = _png(tmp_path / "ok.png", (64, 48))
    (tmp_path / "zero.png").write_bytes(b"")
    records = [{"id": f"ok{i}", "prompt": "q", "answer": "3", "task": "count", "images": [good]} for i in range(9)]
    data = _jsonl(tmp_path / "d.jsonl", [*records, {"id": "zero", "prompt": "q", "answer": "3", "task": "count",
                                                    "images": ["zero.png"]}])
    samples = load_samples(str(data))
    with pytest.raises(DataError, match="sample zero: image 0: .*empty file.*on_bad_image=skip"):
        check_for_training(samples, DataConfig())
    kept = check_for_training(samples, DataConfig(on_bad_image="skip", max_bad_fraction=0.2))
    assert [s.id for s in kept] == [f"ok{i}" for i in range(9)]
    with pytest.raises(DataError, match="1 of 10 samples have bad images"):
        check_for_training(samples, DataConfig(on_bad_image="skip", max_bad_fraction=0.05))


def test_grpo_trainer_checks_data_before_the_model_and_writes_nothing(tmp_path):
    from mmrl.rl.trainer import GRPOLoop

    image = _png(tmp_path / "img.png", (64, 48))
    data = _jsonl(tmp_path / "d.jsonl", [{"id": "ok", "prompt": "<image>How many?", "answer": "3", "task": "count",
                                          "images": [image]},
                                         {"id": "two", "prompt": "<image><image>How many?", "answer": "3",
                                          "task": "count", "images": [image]}])
    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "tests" / "grpo_tiny.yaml",
                      [f"data.train={data}", f"trainer.output_dir={out}", "model.name_or_path=/nonexistent/model",
                       "data.on_bad_image=skip"])
    with pytest.raises(DataError, match=r"d\.jsonl:2: sample two: prompt has 2 <image> placeholders but 1 images"):
        GRPOLoop(cfg)
    assert not out.exists()


def test_grpo_trainer_gate_uses_the_stage_rewards(tmp_path):
    from mmrl.rl.trainer import GRPOLoop

    image = _png(tmp_path / "img.png", (64, 48))
    data = _jsonl(tmp_path / "d.jsonl", [{"id": "colour", "prompt": "What colour?", "answer": "red",
                                          "images": [image]}])
    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "tests" / "grpo_tiny.yaml",
                      [f"data.train={data}", f"trainer.output_dir={out}", "model.name_or_path=/nonexistent/model",
                       "rewards=[{name: iou}]"])
    with pytest.raises(DataError, match=r"d\.jsonl:1: sample colour: reward 'iou' cannot score"):
        GRPOLoop(cfg)
    assert not out.exists()


def test_sft_gate_ignores_golds_but_not_slots(tmp_path):
    from mmrl.sft.trainer import load_sft_samples

    image = _png(tmp_path / "img.png", (64, 48))
    rows = [{"id": "unscorable-ok", "prompt": "<image>Solve.", "answer": "forty two", "task": "math",
             "response": "<answer>forty two</answer>", "images": [image]},
            {"id": "slots", "prompt": "<image><image>Solve.", "answer": "1", "task": "math",
             "response": "<answer>1</answer>", "images": [image]}]
    cfg = load_config(None, [f"data.train={_jsonl(tmp_path / 'sft.jsonl', rows[:1])}"])
    assert [s.id for s in load_sft_samples(cfg, tmp_path / "run")] == ["unscorable-ok"]
    cfg = load_config(None, [f"data.train={_jsonl(tmp_path / 'sft2.jsonl', rows)}"])
    with pytest.raises(DataError, match=r"sft2\.jsonl:2: sample slots: prompt has 2"):
        load_sft_samples(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_huge_file_checks_every_record(tmp_path, capsys):
    image = _png(tmp_path / "img.png", (64, 48))
    rows = [{"id": f"r{i}", "prompt": "How many?", "answer": str(i % 7), "task": "count", "images": [image]}
            for i in range(3000)]
    rows[2718] = {**rows[2718], "answer": [math.pi, 1, 2, 3, 4]}
    rows.append({"id": "long", "prompt": "x" * 2_000_000, "answer": "3", "task": "count", "images": [image]})
    code, err, out = _check(capsys, _jsonl(tmp_path / "big.jsonl", rows), "--no-images")
    assert code == 2 and len(err) == 1 and "big.jsonl:2719: sample r2718: " in err[0]
    assert "3001 samples" in out
