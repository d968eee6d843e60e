"""Synthetic visual tasks: each draws a scene and states one verifiable fact about it.

A task returns a `Fact` (the open question, its answer, distractors of the right kind, a yes/no phrasing and a short
reason for the chain-of-thought target); `forms.py` turns a fact into an open, multiple-choice or yes/no item.
Difficulty 1 is the easiest (one large shape, 4 colours); 3 the hardest.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from data_pipelines.distractors import numeric_distractors
from data_pipelines.synthetic.scenes import SHAPES, colors_for, number_scene, shape_scene
from mmrl.data.boxes import box_iou


@dataclass
class Fact:
    image: Image.Image
    question: str
    answer: Any  # str, or a box [x1, y1, x2, y2] in pixels of the image
    task: str  # mmrl task of the open form
    distractors: list[Any]  # wrong answers of the same kind (at least 3)
    yes_no: Callable[[Any], str]  # candidate answer -> yes/no question
    reason: str  # one short sentence for the <think> target
    scene: dict[str, Any] = field(default_factory=dict)  # the generator's own ground truth


def _plural(kind: str) -> str:
    return kind + "s"


def color_task(rng: random.Random, size: int, difficulty: int) -> Fact:
    colors = colors_for(difficulty)
    if difficulty >= 3:
        kinds = rng.sample(list(SHAPES), 2)
        image, objects = shape_scene(rng, size, 2, colors, distinct_colors=True,
                                     fixed=list(zip(kinds, rng.sample(colors, 2))))
        target = objects[0]
        question, subject = f"What color is the {target.shape}?", f"the {target.shape}"
    else:
        lo, hi = (0.6, 0.9) if difficulty == 1 else (0.3, 0.6)
        image, objects = shape_scene(rng, size, 1, colors, min_frac=lo, max_frac=hi)
        target = objects[0]
        question, subject = "What color is the shape?", "the shape"
    others = [c for c in colors if c != target.color]
    return Fact(image, question, target.color, "text", others,
                lambda c: f"Is {subject} {c}?", f"I see a {target.color} {target.shape}.",
                {"objects": [o.to_json() for o in objects], "target": 0})


def count_task(rng: random.Random, size: int, difficulty: int) -> Fact:
    top = {1: 3, 2: 6}.get(difficulty, 9)
    n = rng.randint(1, top)
    colors = colors_for(difficulty)
    if difficulty >= 3:
        kind = rng.choice(SHAPES)
        others = [s for s in SHAPES if s != kind]
        extra = rng.randint(0, min(3, 9 - n))
        fixed = [(kind, rng.choice(colors)) for _ in range(n)] + [(rng.choice(others), rng.choice(colors))
                                                                   for _ in range(extra)]
        rng.shuffle(fixed)
        image, objects = shape_scene(rng, size, n + extra, colors, fixed=fixed, min_frac=0.4, max_frac=0.8)
        noun = _plural(kind)
    else:
        kind = rng.choice(SHAPES)
        image, objects = shape_scene(rng, size, n, colors, shapes=(kind,), min_frac=0.4, max_frac=0.8)
        noun = "shapes"
    wrong = numeric_distractors(n, rng, minimum=0)
    return Fact(image, f"How many {noun} are there?", str(n), "count", wrong,
                lambda v: f"Are there {v} {noun}?", f"I count {n} {noun}.",
                {"objects": [o.to_json() for o in objects], "kind": None if noun == "shapes" else kind})


RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


def position_task(rng: random.Random, size: int, difficulty: int) -> Fact:
    colors = colors_for(max(difficulty, 1))
    while True:  # resample until the relation is unambiguous (deterministic: same rng stream)
        image, objects = shape_scene(rng, size, 2, colors, distinct_colors=True, min_frac=0.4, max_frac=0.7)
        a, b = objects
        dx = (a.box[0] + a.box[2]) / 2 - (b.box[0] + b.box[2]) / 2
        dy = (a.box[1] + a.box[3]) / 2 - (b.box[1] + b.box[3]) / 2
        use_y = difficulty >= 2 and abs(dy) > abs(dx)
        if (abs(dy) if use_y else abs(dx)) >= size / 4:
            break
    relation = ("below" if dy > 0 else "above") if use_y else ("right" if dx > 0 else "left")
    first, second = f"the {a.color} {a.shape}", f"the {b.color} {b.shape}"
    if difficulty >= 2:
        question = f"Where is {first} relative to {second}? Answer left, right, above or below."
    else:
        question = f"Is {first} left or right of {second}?"
    wrong = [r for r in RELATIONS if r != relation]
    return Fact(image, question, relation, "text", wrong,
                lambda r: f"Is {first} {RELATIONS[r]} {second}?", f"{first.capitalize()} is {RELATIONS[relation]} "
                f"{second}.", {"objects": [o.to_json() for o in objects]})


def shifted_boxes(rng: random.Random, box: list[int], size: int, k: int = 3, max_iou: float = 0.5) -> list[list[int]]:
    """`k` boxes of the same size inside the image, each with IoU < `max_iou` against `box` and each other."""
    w, h = box[2] - box[0], box[3] - box[1]
    out: list[list[int]] = []
    for _ in range(500):
        x, y = rng.randint(0, max(0, size - 1 - w)), rng.randint(0, max(0, size - 1 - h))
        cand = [x, y, x + w, y + h]
        if all(box_iou(cand, other) < max_iou for other in [box, *out]):
            out.append(cand)
            if len(out) == k:
                return out
    # Tiny canvases: fall back to mirrored boxes, still checked against the IoU bound.
    for cand in ([size - 1 - box[2], box[1], size - 1 - box[0], box[3]],
                 [box[0], size - 1 - box[3], box[2], size - 1 - box[1]],
                 [size - 1 - box[2], size - 1 - box[3], size - 1 - box[0], size - 1 - box[1]]):
        if len(out) < k and all(box_iou(cand, other) < max_iou for other in [box, *out]):
            out.append(cand)
    return out


def grounding_task(rng: random.Random, size: int, difficulty: int) -> Fact:
    n = {1: 1, 2: 3}.get(difficulty, 4)
    while True:
        image, objects = shape_scene(rng, size, n, colors_for(3), distinct_colors=True, min_frac=0.3, max_frac=0.7)
        target = objects[0]
        wrong = shifted_boxes(rng, target.box, size)
        if len(wrong) == 3:
            break
    name = f"the {target.color} {target.shape}"
    return Fact(image, f"Give the box of {name} as [x1, y1, x2, y2].", list(target.box), "grounding", wrong,
                lambda b: f"Is [{', '.join(map(str, b))}] the box of {name}?",
                f"{name.capitalize()} spans x {target.box[0]} to {target.box[2]}, y {target.box[1]} to "
                f"{target.box[3]}.", {"objects": [o.to_json() for o in objects], "target": 0})


def read_task(rng: random.Random, size: int, difficulty: int) -> Fact:
    digits = {1: 1, 2: 2}.get(difficulty, 3)
    value = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
    image = number_scene(rng, size, [value])
    low = 0 if digits == 1 else 10 ** (digits - 1)  # options keep the gold's digit count: no give-away by length
    wrong = numeric_distractors(value, rng, minimum=low, maximum=10**digits - 1)
    return Fact(image, "What number is shown?", str(value), "number", wrong,
                lambda v: f"Is the number {v}?", f"I read {value}.", {"numbers": [value]})


def add_task(rng: random.Random, size: int, difficulty: int) -> Fact:
    count, top = {1: (2, 9), 2: (2, 99)}.get(difficulty, (3, 9))
    numbers = [rng.randint(1, top) for _ in range(count)]
    total = sum(numbers)
    image = number_scene(rng, size, numbers)
    wrong = numeric_distractors(total, rng, minimum=count, maximum=count * top)
    return Fact(image, "What is the sum of the numbers?", str(total), "number", wrong,
                lambda v: f"Is the sum of the numbers {v}?",
                f"I read {', '.join(map(str, numbers))}; the sum is {total}.", {"numbers": numbers})


TASKS: dict[str, Callable[[random.Random, int, int], Fact]] = {
    "color": color_task,
    "count": count_task,
    "position": position_task,
    "grounding": grounding_task,
    "read": read_task,
    "add": add_task,
}
