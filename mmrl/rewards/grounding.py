"""Box rewards: `iou`, `giou`, `iou_threshold` (Curr-ReFT detection), `multi_box_iou` (Visual-RFT).

Frames: the gold box is in the sample's `box_frame`/`box_format`. The PREDICTED box is read as `[x1, y1, x2, y2]` in
the `pred_frame` kwarg's frame when given; else in the model's frame, the `model_frame` column the trainer, eval and
demos fill from the model's files (`mmrl.models.interface`: norm1000 for Qwen2-VL and Qwen3-VL, input pixels for
Qwen2.5-VL); with neither (a reward called on bare strings) in the model-input frame (`input_pixel`) when
`input_size` is given and differs from `image_size`, else in the gold's frame. The prediction is mapped into the gold
frame before comparing. A prediction with the wrong number of values, x2 < x1 or y2 < y1, NaN, no box, or
coordinates so large that the overlap is not a finite number: the invalid-prediction score (0; -1 for raw GIoU).

>>> iou_reward(["<answer>[0, 0, 50, 50]</answer>"], answer=[[0, 0, 100, 100]], image_size=[(200, 200)],
...            input_size=[(100, 100)])
[1.0]
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from mmrl.data.boxes import box_iou, convert_box
from mmrl.rewards._columns import col
from mmrl.rewards.extraction import extract_answer
from mmrl.rewards.registry import register_reward

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN|inf"
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
# The per-sample columns a box reader needs; `model_frame` is the model's default frame (see pred_frame_for).
META_KEYS = ("image_size", "input_size", "box_frame", "box_format", "model_frame")
_POINT_PAIR = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")


def _numbers(inner: str) -> list[float] | None:
    parts = [p.strip() for p in inner.split(",")]
    try:
        values = [float(p) for p in parts if p]
    except ValueError:
        return None
    return values if len(values) == len(parts) else None


def parse_boxes(text: str | None) -> list[list[float]]:
    """Every bracketed number list in `text` (innermost `[...]`), and Qwen2-VL `(x1,y1),(x2,y2)` pairs."""
    if not text:
        return []
    boxes = [v for v in (_numbers(m.group(1)) for m in _BRACKET.finditer(text)) if v is not None]
    if not boxes:
        boxes = [[float(g) for g in m.groups()] for m in _POINT_PAIR.finditer(text)]
    return boxes


def valid_box(box: list[float] | None) -> bool:
    return (
        box is not None
        and len(box) == 4
        and all(math.isfinite(v) for v in box)
        and box[2] >= box[0]
        and box[3] >= box[1]
    )


def box_giou(a: list[float], b: list[float]) -> float:
    """Generalized IoU in [-1, 1]: IoU minus the share of the enclosing box covered by neither."""
    iou = box_iou(a, b)
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return iou - (hull - union) / hull if hull > 0 else iou


def pred_frame_for(meta: dict[str, Any], pred_frame: str | None) -> str:
    """The frame a predicted box/point is read in (see the module docstring): `pred_frame`, else the model's."""
    if pred_frame:
        return pred_frame
    if meta.get("model_frame"):
        return meta["model_frame"]
    image_size, input_size = meta.get("image_size"), meta.get("input_size")
    if input_size is not None and (image_size is None or tuple(input_size) != tuple(image_size)):
        return "input_pixel"
    return meta.get("box_frame") or "pixel"


def to_gold_frame(box: list[float], meta: dict[str, Any], pred_frame: str | None) -> list[float]:
    """Map a predicted xyxy box into the gold's frame (xyxy)."""
    return convert_box(
        box, pred_frame_for(meta, pred_frame), meta.get("box_frame") or "pixel",
        image_size=meta.get("image_size"), input_size=meta.get("input_size"),
    )  # fmt: skip


def gold_box(answer: Any, meta: dict[str, Any]) -> list[float] | None:
    """The gold box as xyxy in its own frame, or None when it is not a valid box."""
    if isinstance(answer, str):
        found = parse_boxes(answer)
        answer = found[0] if len(found) == 1 else None
    if isinstance(answer, dict):
        answer = answer.get("bbox") or answer.get("box") or answer.get("bbox_2d")
    if not isinstance(answer, (list, tuple)) or len(answer) != 4:
        return None
    try:
        box = convert_box([float(v) for v in answer], "pixel", "pixel", src_format=meta.get("box_format") or "xyxy")
    except (TypeError, ValueError):
        return None
    return box if valid_box(box) else None


def _single_pred(pred: str | None, meta: dict, pred_frame: str | None) -> list[float] | None:
    boxes = parse_boxes(pred)
    if len(boxes) != 1 or not valid_box(boxes[0]):
        return None  # no box, several boxes, wrong arity, NaN, or x2 < x1
    return to_gold_frame(boxes[0], meta, pred_frame)


def _box_scores(completions, answer, columns, metric, tags, pred_frame) -> list[float | None]:
    n = len(completions)
    answers = col(answer, n)
    metas = [{k: col(columns.get(k), n)[i] for k in META_KEYS}
             for i in range(n)]  # fmt: skip
    out: list[float | None] = []
    for completion, gold_raw, meta in zip(completions, answers, metas, strict=True):
        gold = gold_box(gold_raw, meta)
        if gold is None:
            out.append(None)
            continue
        pred = _single_pred(extract_answer(completion, tags=tags), meta, pred_frame)
        value = metric(pred, gold)
        # Absurd coordinates (1e308) overflow the areas to inf and the ratio to NaN: such a box is an invalid
        # prediction and gets the invalid-prediction score, never None (which would exempt it from the advantage).
        out.append(value if math.isfinite(value) else metric(None, gold))
    return out


def grounding_correct(pred: str | None, answer: Any, threshold: float = 0.5, pred_frame: str | None = None, **meta):
    """1.0 when the predicted box has IoU > threshold with the gold box (used by `accuracy` for task 'grounding')."""
    gold = gold_box(answer, meta)
    if gold is None:
        return None
    box = _single_pred(pred, meta, pred_frame)
    return 1.0 if box is not None and box_iou(box, gold) > threshold else 0.0  # a NaN IoU is not > threshold


@register_reward("iou", reads_answer=True)
def iou_reward(completions, answer=None, tags=("<answer>", "</answer>"), pred_frame=None, **columns) -> list:
    """IoU of the one predicted box with the gold box (0 for an invalid prediction, e.g. x2 < x1).

    >>> iou_reward(["<answer>[0, 0, 10, 10]</answer>", "<answer>[5, 0, 15, 10]</answer>",
    ...             "<answer>[10, 10, 0, 0]</answer>"], answer=[[0, 0, 10, 10]] * 3, image_size=[(100, 100)] * 3)
    [1.0, 0.3333333333333333, 0.0]
    """
    return _box_scores(completions, answer, columns, lambda p, g: box_iou(p, g) if p else 0.0, tags, pred_frame)


@register_reward("giou", reads_answer=True)
def giou_reward(completions, answer=None, tags=("<answer>", "</answer>"), pred_frame=None, raw=False, **columns):
    """GIoU mapped to [0, 1] as (GIoU + 1) / 2 so an invalid prediction (0) never beats a valid far box;
    `raw=True` returns GIoU in [-1, 1] with -1 for an invalid prediction.

    >>> giou_reward(["<answer>[0, 0, 10, 10]</answer>", "<answer>[30, 0, 40, 10]</answer>", "<answer>oops</answer>"],
    ...             answer=[[0, 0, 10, 10]] * 3, image_size=[(100, 100)] * 3)
    [1.0, 0.25, 0.0]
    """
    invalid = -1.0 if raw else 0.0

    def metric(p, g):
        if p is None:
            return invalid
        value = box_giou(p, g)
        return value if raw else (value + 1.0) / 2.0

    return _box_scores(completions, answer, columns, metric, tags, pred_frame)


@register_reward("iou_threshold", reads_answer=True)
def iou_threshold_reward(completions, answer=None, tags=("<answer>", "</answer>"), pred_frame=None, threshold=0.5,
                         **columns):  # fmt: skip
    """Curr-ReFT detection reward: 1.0 when IoU > threshold (0.5), else 0.0.

    >>> iou_threshold_reward(["<answer>[0, 0, 10, 10]</answer>", "<answer>[0, 0, 10, 20]</answer>"],
    ...                      answer=[[0, 0, 10, 10]] * 2, image_size=[(100, 100)] * 2)
    [1.0, 0.0]
    """
    return _box_scores(completions, answer, columns, lambda p, g: float(bool(p) and box_iou(p, g) > threshold), tags,
                       pred_frame)  # fmt: skip


def _pred_objects(text: str | None) -> list[tuple[float, list[float]]]:
    """(confidence, box) pairs from `[{"Position": [...], "Confidence": 0.9}, ...]` or plain box lists (confidence 1)."""
    if not text:
        return []
    objects = []
    for obj in re.finditer(r"\{[^{}]*\}", text):
        boxes = parse_boxes(obj.group(0))
        conf = re.search(r"confidence['\"]?\s*:\s*(" + _NUM + ")", obj.group(0), re.IGNORECASE)
        if len(boxes) == 1:
            objects.append((float(conf.group(1)) if conf else 1.0, boxes[0]))
    if not objects:
        objects = [(1.0, b) for b in parse_boxes(text)]
    return objects


def _gold_boxes(answer: Any, meta: dict) -> list[list[float]] | None:
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except ValueError:
            answer = parse_boxes(answer)
    if isinstance(answer, (list, tuple)) and answer and not isinstance(answer[0], (list, tuple, dict)):
        answer = [answer]
    if not isinstance(answer, (list, tuple)) or not answer:
        return None
    boxes = [gold_box(a, meta) for a in answer]
    return None if any(b is None for b in boxes) else boxes  # type: ignore[return-value]


@register_reward("multi_box_iou", reads_answer=True)
def multi_box_iou_reward(completions, answer=None, tags=("<answer>", "</answer>"), pred_frame=None, threshold=0.5,
                         **columns):  # fmt: skip
    """Visual-RFT detection: predictions sorted by confidence are greedily matched to unmatched gold boxes at
    IoU > threshold; reward = sum of matched IoUs / max(n_gold, n_pred). An invalid predicted box counts as unmatched.

    >>> multi_box_iou_reward(['<answer>[{"Position": [0, 0, 10, 10], "Confidence": 0.9},'
    ...                       ' {"Position": [50, 50, 60, 60], "Confidence": 0.5}]</answer>'],
    ...                      answer=[[[0, 0, 10, 10], [80, 80, 90, 90]]], image_size=[(100, 100)])
    [0.5]
    """
    n = len(completions)
    answers = col(answer, n)
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        meta = {k: col(columns.get(k), n)[i] for k in META_KEYS}
        golds = _gold_boxes(answers[i], meta)
        if golds is None:
            out.append(None)
            continue
        preds = sorted(_pred_objects(extract_answer(completion, tags=tags)), key=lambda cb: -cb[0])
        if not preds:
            out.append(0.0)
            continue
        matched, total = set(), 0.0
        for _, box in preds:
            if not valid_box(box):
                continue
            box = to_gold_frame(box, meta, pred_frame)
            best, best_j = threshold, None
            for j, g in enumerate(golds):
                if j not in matched and box_iou(box, g) > best:
                    best, best_j = box_iou(box, g), j
            if best_j is not None:
                matched.add(best_j)
                total += best
        out.append(total / max(len(golds), len(preds)))
    return out
