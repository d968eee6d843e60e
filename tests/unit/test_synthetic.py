"""Synthetic builder: deterministic by seed, answers verified against the image itself; curriculum variants."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from PIL import Image

from data_pipelines.curriculum import build_curriculum
from data_pipelines.synthetic import TASKS, build_synthetic
from data_pipelines.synthetic.scenes import BACKGROUND, COLORS
from data_pipelines.synthetic.tasks import box_iou
from mmrl.data.dataset import load_samples
from mmrl.errors import UserError


def _files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_same_seed_identical_files_other_seed_differs(tmp_path):
    kwargs = {"tasks": list(TASKS), "n": 18, "difficulty": [1, 2, 3], "image_size": 56}
    build_synthetic(seed=3, out_dir=tmp_path / "a", **kwargs)
    build_synthetic(seed=3, out_dir=tmp_path / "b", **kwargs)
    build_synthetic(seed=4, out_dir=tmp_path / "c", **kwargs)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def _components(mask: np.ndarray) -> int:
    import cv2

    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    path = build_synthetic(list(TASKS), n=72, seed=0, out_dir=out, difficulty=[1, 2, 3], image_size=84)
    return load_samples(str(path))


def test_answers_verify_against_the_image(synthetic):
    for sample in synthetic:
        meta = sample.meta
        pixels = np.asarray(Image.open(sample.images[0]).convert("RGB"))
        objects = meta["scene"].get("objects", [])
        for obj in objects:  # every recorded box is exactly the extent of its colour inside it
            x1, y1, x2, y2 = obj["box"]
            region = np.all(pixels[y1:y2 + 1, x1:x2 + 1] == COLORS[obj["color"]], axis=-1)
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
        task, gold = meta["synthetic_task"], meta["open_answer"]
        if task == "color":
            target = objects[meta["scene"]["target"]]
            x1, y1, x2, y2 = target["box"]
            assert np.all(pixels[(y1 + y2) // 2, (x1 + x2) // 2] == COLORS[gold])
        elif task == "count" and meta["scene"]["kind"] is None:
            assert _components(np.any(pixels != BACKGROUND, axis=-1)) == int(gold)
        elif task == "count":
            assert sum(o["shape"] == meta["scene"]["kind"] for o in objects) == int(gold)
        elif task == "grounding":
            assert gold == objects[0]["box"]
        elif task == "add":
            assert int(gold) == sum(meta["scene"]["numbers"])
        elif task == "read":
            assert gold == str(meta["scene"]["numbers"][0])
        if sample.task == "mc":
            assert sample.choices[ord(sample.answer) - 65] == (str(gold) if not isinstance(gold, list)
                                                               else "[" + ", ".join(map(str, gold)) + "]")
        elif sample.task == "yes_no":
            assert (sample.answer == "yes") == (meta["candidate"] == gold)
        else:
            assert sample.answer == gold
        assert sample.response.endswith("</answer>") and "<think>" in sample.response


def test_easiest_color_task_is_short(tmp_path):
    path = build_synthetic(["color"], n=8, seed=0, out_dir=tmp_path, forms=("open",), image_size=56)
    for record in map(json.loads, path.read_text().splitlines()):
        assert record["answer"] in ("red", "blue", "green", "yellow")
        assert len(record["prompt"].split()) <= 6 and len(record["response"].split()) <= 10


def test_bad_builder_arguments():
    with pytest.raises(UserError, match="known tasks: color"):
        build_synthetic(["colour"], n=1, seed=0, out_dir="/tmp/unused")


def test_curriculum_stages(tmp_path):
    src = build_synthetic(["count", "color", "grounding", "add"], n=40, seed=1, out_dir=tmp_path / "src",
                          forms=("open",), difficulty=[1, 2], image_size=84)
    paths = build_curriculum(src, tmp_path / "cur", seed=0)
    yes_no, mc, opened = (load_samples(str(paths[k])) for k in ("stage1_yes_no", "stage2_mc", "stage3_open"))
    assert len(yes_no) == len(mc) == len(opened) == 40
    answers = [s.answer for s in yes_no]
    assert abs(answers.count("yes") - answers.count("no")) <= 1
    for sample in mc:
        gold = sample.meta["open_answer"]
        assert sample.task == "mc" and len(set(sample.choices)) == 4
        if isinstance(gold, list):
            boxes = [json.loads(c) for c in sample.choices]
            assert sum(b == gold for b in boxes) == 1
            assert all(box_iou(b, gold) < 0.5 for b in boxes if b != gold)
        else:
            assert sample.choices[ord(sample.answer) - 65] == gold
            if gold.isdigit():  # near the gold: within max(4, 10%) (see data_pipelines.distractors)
                assert all(abs(int(c) - int(gold)) <= max(4, math.ceil(0.1 * int(gold))) for c in sample.choices)
            else:
                assert all(c in COLORS for c in sample.choices)
    assert "Answer with a number." in next(s for s in opened if s.task == "count").prompt


# Chi-square bound for 4 equally likely positions (3 degrees of freedom, p = 0.001): a fixed seed makes the test
# deterministic; a leak such as "the gold is always the 2nd-smallest option" scores in the hundreds.
CHI2_3DOF_P001 = 16.27


def _chi2(positions: list[int], bins: int = 4) -> float:
    expected = len(positions) / bins
    return sum((positions.count(b) - expected) ** 2 / expected for b in range(bins))


def _value_rank(choices: list[str], letter: str) -> int:
    values = [float(c) for c in choices]
    return sorted(values).index(values[ord(letter) - 65])


def test_curriculum_gold_position_is_uniform(tmp_path):
    rng = random.Random(7)
    rows = [{"id": f"q{i}", "prompt": "How many dots are there?", "answer": str(rng.randint(5, 400)), "task": "count"}
            for i in range(400)]
    rows += [{"id": f"m{i}", "prompt": "What is the length?", "answer": f"{rng.uniform(3, 90):.1f}", "task": "number"}
             for i in range(200)]
    (tmp_path / "src.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = load_samples(str(build_curriculum(tmp_path / "src.jsonl", tmp_path / "cur", seed=0)["stage2_mc"]))
    assert len(mc) == 600
    ranks = [_value_rank(s.choices, s.answer) for s in mc]
    letters = [ord(s.answer) - 65 for s in mc]
    assert _chi2(ranks) < CHI2_3DOF_P001, [ranks.count(b) for b in range(4)]
    assert _chi2(letters) < CHI2_3DOF_P001, [letters.count(b) for b in range(4)]
    for sample in mc:  # distractors are near the gold: within max(4 steps of its last digit, about 10%)
        gold = float(sample.meta["open_answer"])
        step = 0.1 if "." in sample.meta["open_answer"] else 1.0
        assert all(abs(float(c) - gold) <= max(4 * step, 0.1 * gold + step) + 1e-9 for c in sample.choices)


@pytest.mark.parametrize(("task", "difficulty"), [("read", 2), ("read", 3), ("add", 2), ("count", 3)])
def test_synthetic_mc_gold_position_is_uniform(task, difficulty):
    from data_pipelines.synthetic.builder import make_item

    ranks, letters = [], []
    for index in range(400):
        rng = random.Random(f"uniform:{task}:{index}")
        fact = TASKS[task](rng, 56, difficulty)
        item = make_item(fact, "mc", rng)
        ranks.append(_value_rank(item["choices"], item["answer"]))
        letters.append(ord(item["answer"]) - 65)
    assert _chi2(letters) < CHI2_3DOF_P001
    if task == "count":  # counts of 1..2 cannot have 3 options below them; every rank still occurs often
        assert min(ranks.count(b) for b in range(4)) > 40, [ranks.count(b) for b in range(4)]
    else:
        assert _chi2(ranks) < CHI2_3DOF_P001, [ranks.count(b) for b in range(4)]
