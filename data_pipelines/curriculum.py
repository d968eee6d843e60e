"""Curriculum variants (Curr-ReFT): from samples with verifiable answers, derive yes/no and multiple-choice stages.

- stage 1 (`stage1_yes_no.jsonl`): "Proposed answer: X. Is this correct?" — balanced true/false statements.
- stage 2 (`stage2_mc.jsonl`): the gold answer among 3 distractors of the right kind: nearby numbers on both sides
  (the gold's rank among the options is uniform, see `data_pipelines.distractors`), other colours, other answers of
  the same task, boxes shifted to IoU < 0.5; options in random order.
- stage 3 (`stage3_open.jsonl`): the open question, with a prompt that states the expected answer form.

>>> import tempfile
>>> from data_pipelines.synthetic import build_synthetic
>>> src = build_synthetic(["count"], n=8, seed=0, out_dir=tempfile.mkdtemp(), forms=("open",), image_size=56)
>>> sorted(build_curriculum(src, tempfile.mkdtemp(), seed=0))
['stage1_yes_no', 'stage2_mc', 'stage3_open']
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from data_pipelines.distractors import numeric_distractors
from data_pipelines.synthetic.scenes import COLORS
from data_pipelines.synthetic.tasks import shifted_boxes
from mmrl.data.answers import is_number
from mmrl.data.dataset import load_samples
from mmrl.data.sample import Sample
from mmrl.data.vision import load_image
from mmrl.errors import DataError

ANSWER_FORMS = {
    "count": "Answer with a number.",
    "number": "Answer with a number.",
    "math": "Answer with the final value.",
    "grounding": "Answer with the box as [x1, y1, x2, y2].",
    "text": "Answer with a word or short phrase.",
    "mc": "Answer with the option letter.",
    "yes_no": "Answer yes or no.",
}


def _fmt(answer: Any) -> str:
    if isinstance(answer, list):
        return "[" + ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in answer) + "]"
    return str(answer)


def distractors(sample: Sample, pool: list[str], rng: random.Random) -> list[Any]:
    """Three wrong answers of the same kind as the gold answer (empty when none can be made)."""
    answer = sample.answer
    if isinstance(answer, list) and len(answer) == 4:
        size = sample.image_size
        if size is None and sample.images:
            size = load_image(sample.images[0]).size
            sample.image_size = size
        if size is None:
            return []
        box = [int(round(v)) for v in answer]
        return shifted_boxes(rng, box, min(size))
    if not isinstance(answer, str):
        return []
    if is_number(answer):
        # Counts and measurements are not negative: a negative option would be an easy give-away.
        minimum = 0 if not answer.strip().startswith("-") else None
        return numeric_distractors(answer, rng, k=3, minimum=minimum)
    if answer.lower() in COLORS:
        return rng.sample([c for c in COLORS if c != answer.lower()], 3)
    others = sorted({a for a in pool if a.lower() != answer.lower()})
    return rng.sample(others, 3) if len(others) >= 3 else []


def _question(sample: Sample) -> str:
    if not isinstance(sample.prompt, str):
        raise DataError(f"sample {sample.id}: curriculum variants need a text prompt")
    return sample.prompt


def _record(sample: Sample, prompt: str, answer: Any, task: str, out_dir: Path, stage: str,
            choices: list[str] | None = None) -> dict[str, Any]:
    images = [os.path.relpath(str(p), out_dir) if isinstance(p, str) else p for p in sample.images]
    record = {"id": f"{sample.id}/{stage}", "images": images, "prompt": prompt, "answer": answer, "task": task,
              "meta": {"source_id": sample.id, "stage": stage, "open_answer": sample.answer}}
    if choices:
        record["choices"] = choices
    if sample.image_size:
        record["image_size"] = list(sample.image_size)
    return record


def build_curriculum(in_path: str | Path, out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the three stage datasets derived from `in_path`; returns {stage name: path}."""
    samples = [s for s in load_samples(str(in_path)) if s.task not in ("mc", "yes_no", "gui")]
    if not samples:
        raise DataError(f"{in_path}: no open-answer samples to derive a curriculum from (mc/yes_no/gui are skipped)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for s in samples:
        if isinstance(s.answer, str):
            pools.setdefault(s.task, []).append(s.answer)
    truths = [i % 2 == 0 for i in range(len(samples))]
    rng.shuffle(truths)  # exactly balanced true/false statements, in random order
    stages: dict[str, list[dict[str, Any]]] = {"stage1_yes_no": [], "stage2_mc": [], "stage3_open": []}
    skipped = []
    for sample, truth in zip(samples, truths):
        question = _question(sample)
        wrong = distractors(sample, pools.get(sample.task, []), rng)
        if len(wrong) < 3:
            skipped.append(sample.id)
            continue
        gold = _fmt(sample.answer)
        candidate = gold if truth else _fmt(rng.choice(wrong))
        stages["stage1_yes_no"].append(_record(
            sample, f"{question}\nProposed answer: {candidate}. Is this correct? {ANSWER_FORMS['yes_no']}",
            "yes" if truth else "no", "yes_no", out, "yes_no"))
        options = [gold] + [_fmt(w) for w in wrong[:3]]
        rng.shuffle(options)
        lines = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
        stages["stage2_mc"].append(_record(sample, f"{question}\n{lines}\n{ANSWER_FORMS['mc']}",
                                           chr(65 + options.index(gold)), "mc", out, "mc", options))
        form = ANSWER_FORMS.get(sample.task, ANSWER_FORMS["text"])
        stages["stage3_open"].append(_record(sample, f"{question}\n{form}", sample.answer, sample.task, out, "open"))
    if not stages["stage3_open"]:
        raise DataError(f"{in_path}: no sample allows distractors of the right kind (skipped: {len(skipped)})")
    paths = {}
    for name, records in stages.items():
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        paths[name] = path
    if skipped:
        (out / "skipped.json").write_text(json.dumps({"reason": "fewer than 3 distractors of the same kind",
                                                      "ids": skipped}, indent=1))
    return paths
