"""Build a synthetic dataset: JSONL records in mmrl's native format plus PNG images, deterministic by seed.

>>> import tempfile
>>> path = build_synthetic(["color"], n=4, seed=0, out_dir=tempfile.mkdtemp(), image_size=56)
>>> path.name
'data.jsonl'
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipelines.synthetic.tasks import TASKS, Fact
from mmrl.errors import UserError

FORMS = ("open", "mc", "yes_no")


MAX_IMAGE_SIZE = 4096  # pixels per side: larger synthetic screens only cost memory

def _answer_text(answer: Any) -> str:
    return f"[{', '.join(str(v) for v in answer)}]" if isinstance(answer, list) else str(answer)


def _cot(reason: str, answer: str) -> str:
    return f"<think> {reason} </think><answer> {answer} </answer>"


def make_item(fact: Fact, form: str, rng: random.Random) -> dict[str, Any]:
    """The prompt, answer, task, choices and CoT response of one form of a fact."""
    gold = _answer_text(fact.answer)
    if form == "open":
        return {"prompt": fact.question, "answer": fact.answer, "task": fact.task, "choices": None,
                "response": _cot(fact.reason, gold)}
    if form == "mc":
        options = [gold] + [_answer_text(d) for d in rng.sample(fact.distractors, 3)]
        rng.shuffle(options)
        letter = chr(65 + options.index(gold))
        lines = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
        return {"prompt": f"{fact.question}\n{lines}\nAnswer with the letter.", "answer": letter, "task": "mc",
                "choices": options, "response": _cot(f"{fact.reason} That is option {letter}.", letter)}
    if form == "yes_no":
        truth = rng.random() < 0.5
        candidate = fact.answer if truth else rng.choice(fact.distractors)
        answer = "yes" if truth else "no"
        return {"prompt": f"{fact.yes_no(candidate)} Answer yes or no.", "answer": answer, "task": "yes_no",
                "choices": None, "response": _cot(fact.reason, answer), "candidate": candidate}
    raise UserError(f"unknown form '{form}'; known forms: {', '.join(FORMS)}")


def generate(task: str, form: str, index: int, seed: int, difficulty: int, image_size: int):
    """One (image, record) pair; the same arguments always give the same pair."""
    rng = random.Random(f"{seed}:{task}:{form}:{difficulty}:{index}")
    fact = TASKS[task](rng, image_size, difficulty)
    item = make_item(fact, form, rng)
    candidate = item.pop("candidate", None)
    meta = {"synthetic_task": task, "form": form, "difficulty": difficulty, "open_answer": fact.answer,
            "scene": fact.scene}
    if candidate is not None:
        meta["candidate"] = candidate
    return fact.image, item, meta


def build_synthetic(tasks: Sequence[str], n: int, seed: int, out_dir: str | Path, forms: Sequence[str] = FORMS,
                    difficulty: int | Sequence[int] = 1, image_size: int = 112, with_cot: bool = True,
                    split: str = "data") -> Path:
    """Write `n` samples cycling through tasks x forms (x difficulties) to `out_dir/<split>.jsonl` + `out_dir/images/`.

    Several splits (e.g. `train` and `eval`, drawn with different seeds) can share one directory: the image names of a
    split other than `data` start with the split's name. Returns the JSONL path; `mmrl.data.load_samples` reads it.
    """
    if "gui" in tasks:  # screens with UI-R1 actions: their own generator (no open/mc/yes_no forms)
        if list(tasks) != ["gui"]:
            raise UserError(f"the gui task builds its own dataset; build it alone (--tasks gui), not with {tasks}")
        from data_pipelines.synthetic.gui import build_gui

        return build_gui(n, seed, out_dir, image_size=image_size, split=split, with_cot=with_cot)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(f"unknown synthetic task(s) {unknown}; known tasks: {', '.join(TASKS)}, gui")
    bad_forms = [f for f in forms if f not in FORMS]
    if bad_forms or not forms:
        raise UserError(f"unknown form(s) {bad_forms}; known forms: {', '.join(FORMS)}")
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    if not levels or any(level not in (1, 2, 3) for level in levels):
        raise UserError(f"difficulty must be 1, 2 or 3 (got {difficulty})")
    # An upper bound too: `--image-size 100000` drew 40 GB canvases and the process was killed for memory.
    if n < 1 or not 28 <= image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"need n >= 1 and 28 <= image_size <= {MAX_IMAGE_SIZE} (got n={n}, image_size={image_size})")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    combos = [(t, f) for f in forms for t in tasks]
    lines = []
    for i in range(n):
        task, form = combos[i % len(combos)]
        level = levels[(i // len(combos)) % len(levels)]
        image, item, meta = generate(task, form, i, seed, level, image_size)
        name = f"{task}-{form}-{i:06d}" if split == "data" else f"{split}-{task}-{form}-{i:06d}"
        image.save(out / "images" / f"{name}.png", optimize=False)
        record = {"id": name, "images": [f"images/{name}.png"], **item, "image_size": list(image.size),
                  "meta": meta}
        if record["choices"] is None:
            del record["choices"]
        if not with_cot:
            del record["response"]
        lines.append(json.dumps(record))
    path = out / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
