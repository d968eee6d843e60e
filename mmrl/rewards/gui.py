"""GUI rewards: `gui_action` (UI-R1) and `point_in_box` (ScreenSpot-style grounding).

Gold actions are dicts: `{"action_type": "click", "bbox": [x1, y1, x2, y2]}` (or `"action"`), a click at a POINT
`{"action_type": "click", "x": 1027, "y": 209}` (UI-R1's AndroidControl records; also `"coordinate": [x, y]`),
`open_app` + `app_name`, `scroll` + `direction`, `input_text` + `text`, `navigate_back`. The model answers one action
such as `[{'action': 'click', 'coordinate': [x, y]}]` inside `<answer>`. Predicted points are read in the model's
frame (the `model_frame` column, see `mmrl.models.interface`), else in the model-input frame when `input_size` differs
from `image_size`; `pred_frame` overrides both. Then they are mapped to the gold's frame.

A click on a box gold is right when the point lies inside the box (bounds inclusive). A click on a POINT gold is right
when it lies within `click_radius` (default 0.14) of the gold point, measured as the Euclidean distance in screen
fractions (x / width, y / height) — the tap rule of Android in the Wild's action matching (Rawles et al., 2023:
taps within 14% of the screen match), which AndroidControl evaluations inherit. Qwen2.5-VL's AndroidControl
evaluator uses the stricter 0.04; pass `click_radius=0.04` to train against that. A point gold needs the image size
(`image_size`, or a normalized `box_frame`) to measure fractions; without it the item is unscorable (None).

>>> gold = {"action_type": "click", "bbox": [100, 100, 200, 200]}
>>> gui_action_reward(["<think>t</think><answer>[{'action': 'click', 'coordinate': [75, 75]}]</answer>"],
...                   answer=[gold], image_size=[(400, 400)], input_size=[(200, 200)])
[3.0]
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

from mmrl.data.boxes import convert_point
from mmrl.errors import UserError
from mmrl.rewards._columns import col
from mmrl.rewards.extraction import extract_answer
from mmrl.rewards.format import is_strict_format
from mmrl.rewards.grounding import gold_box, parse_boxes, pred_frame_for
from mmrl.rewards.parsing import normalize_text
from mmrl.rewards.registry import register_reward

_MAX_ACTION_CHARS = 2000
GUI_ACTIONS = ("click", "open_app", "scroll", "navigate_back", "input_text")
_ARG_KEYS = {"open_app": ("app_name", "app"), "scroll": ("direction",), "input_text": ("text", "input_text", "content")}


def parse_action(text: str | None) -> dict[str, Any] | None:
    """The one action dict in an answer (a dict or a one-element list), or None (also for an answer longer than any
    action: parsing a megabyte of brackets as a Python literal would take seconds)."""
    if not text or len(text) > _MAX_ACTION_CHARS:
        return None
    value: Any = None
    for loader in (json.loads, ast.literal_eval):
        try:
            value = loader(text)
            break
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        return None
    kind = value.get("action") or value.get("action_type")
    return {**value, "action": str(kind).strip().lower()} if kind else None


def _arg(action: dict[str, Any], kind: str) -> str | None:
    for key in _ARG_KEYS.get(kind, ()):
        if action.get(key) not in (None, ""):
            return normalize_text(action[key])
    return None


def _point(point: Any) -> tuple[float, float] | None:
    if not isinstance(point, (list, tuple)) or len(point) != 2:
        return None
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def point_in_gold(point: Any, gold_bbox: Any, meta: dict[str, Any], pred_frame: str | None) -> float:
    """1.0 when a predicted (x, y) in the model frame falls inside the gold box (bounds inclusive)."""
    xy = _point(point)
    if xy is None:
        return 0.0
    box = gold_box(gold_bbox, meta)
    if box is None:
        raise UserError(f"sample {meta.get('id', '?')}: gold click has no valid bbox [x1, y1, x2, y2]")
    src, dst = pred_frame_for(meta, pred_frame), meta.get("box_frame") or "pixel"
    px, py = xy if src == dst else convert_point(
        list(xy), src, dst, image_size=meta.get("image_size"), input_size=meta.get("input_size"))  # fmt: skip
    return 1.0 if box[0] <= px <= box[2] and box[1] <= py <= box[3] else 0.0


def gold_point(gold: dict[str, Any]) -> tuple[float, float] | None:
    """The gold click point of a point gold (`x`/`y`, or `coordinate`/`point`), or None."""
    if gold.get("x") is not None and gold.get("y") is not None:
        return _point([gold["x"], gold["y"]])
    return _point(gold.get("coordinate") or gold.get("point"))


def point_near_gold(point: Any, gold_xy: tuple[float, float], meta: dict[str, Any], pred_frame: str | None,
                    click_radius: float) -> float | None:  # fmt: skip
    """1.0 when the predicted point is within `click_radius` screen fractions of the gold point; None when the image
    size needed to measure fractions is missing."""
    xy = _point(point)
    if xy is None:
        return 0.0
    sizes = {"image_size": meta.get("image_size"), "input_size": meta.get("input_size")}
    try:
        gx, gy = convert_point(list(gold_xy), meta.get("box_frame") or "pixel", "norm1", **sizes)
        px, py = convert_point(list(xy), pred_frame_for(meta, pred_frame), "norm1", **sizes)
    except (ValueError, TypeError, ZeroDivisionError):
        return None
    distance = math.hypot(px - gx, py - gy)
    return 1.0 if math.isfinite(distance) and distance <= click_radius else 0.0


def score_action(completion: str, gold: Any, meta: dict[str, Any], pred_frame: str | None = None,
                 click_radius: float = 0.14) -> dict[str, float]:  # fmt: skip
    """R_action, R_coord and R_format (each 0 or 1) for one completion.

    Raises UserError when the gold cannot be scored (not an action, a click with neither a valid box nor a point, a
    point gold without the image size); the `gui_action` reward turns that into None for the item alone."""
    where = f"sample {meta.get('id', '?')}"
    if not isinstance(gold, dict) or not (gold.get("action_type") or gold.get("action")):
        raise UserError(f"{where}: gui gold answer must be an action dict, got {gold!r:.80}")
    gold_kind = str(gold.get("action_type") or gold.get("action")).lower()
    target = gold.get("bbox") or gold.get("box")
    point = gold_point(gold) if gold_kind == "click" and target is None else None
    if gold_kind == "click" and point is None and gold_box(target, meta) is None:
        raise UserError(f"{where}: gold click has neither a valid bbox [x1, y1, x2, y2] nor a point x, y")
    pred = parse_action(extract_answer(completion))
    r_format = float(is_strict_format(completion) and pred is not None)
    r_action = float(pred is not None and pred["action"] == gold_kind)
    r_coord: float | None = 0.0
    if r_action:
        if gold_kind == "click":
            # The point as UI-R1 writes it (`coordinate`), or as AndroidControl golds do (`x`, `y`): a model that
            # answers in its gold's own format must not lose the coordinate reward.
            xy = pred.get("coordinate") or pred.get("point") or pred.get("xy")  # type: ignore[union-attr]
            if xy is None and pred.get("x") is not None and pred.get("y") is not None:  # type: ignore[union-attr]
                xy = [pred["x"], pred["y"]]  # type: ignore[index]
            if point is not None:
                r_coord = point_near_gold(xy, point, meta, pred_frame, click_radius)
            else:
                r_coord = point_in_gold(xy, target, meta, pred_frame)
        else:
            wanted = _arg(gold, gold_kind)
            r_coord = float(wanted is None or _arg(pred, gold_kind) == wanted)  # type: ignore[arg-type]
    elif gold_kind == "click" and point is not None:
        r_coord = point_near_gold((0, 0), point, meta, pred_frame, 1.0) and 0.0  # None when it cannot be measured
    if r_coord is None:
        raise UserError(f"{where}: a point gold needs the image size (image_size) to measure the click distance")
    return {"action": r_action, "coord": r_coord, "format": r_format}


def dast_scores(correct: list[bool], lengths: list[float], groups: list[Any], max_length: float | None = None) -> list:
    """DAST length shaping per group (UI-R1-E): budget = p * mean correct length + (1 - p) * L_max with p the group's
    accuracy; lam = (L - budget) / budget; correct -> max(0.5 - 0.5 lam, 0.1), wrong -> min(0.9 lam - 0.1, -0.1)."""
    out = [0.0] * len(correct)
    for g in dict.fromkeys(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        l_max = max_length or max(lengths[i] for i in idx)
        right = [lengths[i] for i in idx if correct[i]]
        p = len(right) / len(idx)
        budget = p * (sum(right) / len(right) if right else 0.0) + (1 - p) * l_max
        for i in idx:
            lam = (lengths[i] - budget) / budget if budget > 0 else 0.0
            out[i] = max(0.5 - 0.5 * lam, 0.1) if correct[i] else min(0.9 * lam - 0.1, -0.1)
    return out


def _score_or_none(completion: str, gold: Any, meta: dict[str, Any], pred_frame: str | None,
                   click_radius: float) -> dict[str, float] | None:  # fmt: skip
    """One item's parts, or None when its gold cannot be scored: a bad gold costs only its own item."""
    try:
        return score_action(completion, gold, meta, pred_frame, click_radius)
    except UserError:
        return None


def _metas(columns: dict[str, Any], n: int) -> list[dict[str, Any]]:
    keys = ("id", "image_size", "input_size", "box_frame", "box_format", "model_frame")
    cols = {k: col(columns.get(k), n) for k in keys}
    return [{k: cols[k][i] for k in keys} for i in range(n)]


@register_reward("gui_action", batched="dast", reads_answer=True)
def gui_action_reward(completions, answer=None, pred_frame=None, dast=False, max_length=None, click_radius=0.14,
                      **columns) -> list:  # fmt: skip
    """UI-R1: R = R_action + R_coord + R_format (0..3); None for an item whose gold cannot be scored. `dast=True` adds
    the DAST length score per group (needs the `completion_length` and `group_id` columns; the reward then needs its
    whole batch). The click point is read in the model-input frame (200x200 here) and mapped to the original image
    (400x400) before the in-box test: (75, 75) -> (150, 150), inside the gold box. A point gold at (1027, 209) on a
    1080x2400 screen is hit by (1040, 300): 0.039 of the screen away, within 0.14.

    >>> gui_action_reward(["<think>t</think><answer>[{'action': 'click', 'coordinate': [75, 75]}]</answer>",
    ...                    "<think>t</think><answer>[{'action': 'click', 'coordinate': [20, 20]}]</answer>"],
    ...                   answer=[{"action_type": "click", "bbox": [100, 100, 200, 200]}] * 2,
    ...                   image_size=[(400, 400)] * 2, input_size=[(200, 200)] * 2)
    [3.0, 2.0]
    >>> gui_action_reward(["<think>t</think><answer>[{'action': 'click', 'coordinate': [1040, 300]}]</answer>",
    ...                    "<think>t</think><answer>[{'action': 'click', 'coordinate': [100, 2000]}]</answer>"],
    ...                   answer=[{"action_type": "click", "x": 1027, "y": 209}] * 2, image_size=[(1080, 2400)] * 2)
    [3.0, 2.0]
    """
    if not 0 < click_radius <= 2:
        raise UserError(f"gui_action: click_radius is a fraction of the screen, 0 < click_radius <= 2 (got {click_radius})")
    n = len(completions)
    answers, metas = col(answer, n), _metas(columns, n)
    parts = [_score_or_none(c, a, m, pred_frame, click_radius) for c, a, m in zip(completions, answers, metas, strict=True)]
    totals: list[float | None] = [None if p is None else p["action"] + p["coord"] + p["format"] for p in parts]
    if dast:
        lengths = columns.get("completion_length")
        if lengths is None:
            raise UserError("gui_action with dast=True needs the 'completion_length' column (tokens per completion)")
        groups = col(columns.get("group_id"), n, 0)
        correct = [p is not None and p["action"] == 1.0 and p["coord"] == 1.0 for p in parts]
        shaping = dast_scores(correct, col(lengths, n), groups, max_length)
        totals = [None if t is None else t + d for t, d in zip(totals, shaping, strict=True)]
    return totals


@register_reward("point_in_box", reads_answer=True)
def point_in_box_reward(completions, answer=None, pred_frame=None, tags=("<answer>", "</answer>"), **columns) -> list:
    """ScreenSpot-style grounding: 1.0 when the predicted point `[x, y]` / `(x, y)` lies inside the gold box.

    >>> point_in_box_reward(["<answer>(50, 60)</answer>", "<answer>[0, 0]</answer>"], answer=[[40, 50, 60, 60]] * 2,
    ...                     image_size=[(100, 100)] * 2)
    [1.0, 0.0]
    """
    n = len(completions)
    answers, metas = col(answer, n), _metas(columns, n)
    out: list[float | None] = []
    for completion, gold, meta in zip(completions, answers, metas, strict=True):
        if gold_box(gold, meta) is None:
            out.append(None)
            continue
        text = extract_answer(completion, tags=tags) or ""
        points = [b for b in parse_boxes(text.replace("(", "[").replace(")", "]")) if len(b) == 2]
        out.append(point_in_gold(points[0], gold, meta, pred_frame) if len(points) == 1 else 0.0)
    return out
