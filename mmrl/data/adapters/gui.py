"""GUI formats: ScreenSpot (`img_filename`, `bbox`, `instruction`) and UI-R1 (`image`, `gt` action, `task` text).

Gold answers are action dicts: `{"action_type": "click", "bbox": [x1, y1, x2, y2]}` for ScreenSpot (pixels of the
original screenshot; the official annotation is xywh, as SeeClick reads it) and UI-R1's `gt` unchanged
(`{"action_type": "click", "x": 1027, "y": 209}`, `open_app`, `input_text`, `scroll`, `navigate_back`).
"""

from __future__ import annotations

from typing import Any

from mmrl.data.adapters.base import Adapter, ConvertContext, register_adapter
from mmrl.data.sample import Sample

GUI_PROMPT = "{instruction}\nOutput the action to perform."


def _detect_screenspot(record: dict[str, Any]) -> bool:
    return "img_filename" in record and "bbox" in record and "instruction" in record


def _convert_screenspot(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    bbox = record.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise ctx.fail(f"field 'bbox' must be 4 numbers, got {bbox!r}")
    meta = {k: record[k] for k in ("data_type", "data_source", "platform") if k in record}
    return Sample(id=ctx.default_id(record), prompt=GUI_PROMPT.format(instruction=record["instruction"]),
                  answer={"action_type": "click", "bbox": list(bbox)}, task="gui",
                  images=ctx.images(record["img_filename"]), box_format="xywh", meta=meta)


def _detect_ui_r1(record: dict[str, Any]) -> bool:
    return isinstance(record.get("gt"), dict) and "action_type" in record["gt"]


def _convert_ui_r1(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    instruction = record.get("task") or record.get("instruction")
    if not instruction:
        raise ctx.fail("record has no instruction (field 'task')")
    return Sample(id=ctx.default_id(record), prompt=GUI_PROMPT.format(instruction=instruction),
                  answer=dict(record["gt"]), task="gui", images=ctx.images(record.get("image")))


register_adapter(Adapter("screenspot", _detect_screenspot, _convert_screenspot, "ScreenSpot (img_filename, bbox)"))
register_adapter(Adapter("ui_r1", _detect_ui_r1, _convert_ui_r1, "UI-R1 (image, gt action, task)"))
