"""Box coordinate frames, so rewards and evaluation compare boxes in one frame.

Frames (sizes are `(width, height)`):
- `pixel`: absolute pixels of the original image (the default a dataset declares).
- `input_pixel`: absolute pixels of the resized model input — what Qwen2.5-VL reads and writes.
- `norm1000`: integers-ish in 0..1000 of the image — the Qwen2-VL convention.
- `norm1`: 0..1 of the image.
Formats: `xyxy` (x1, y1, x2, y2) and `xywh` (x, y, width, height).

>>> convert_box([10, 20, 30, 40], "pixel", "norm1000", image_size=(100, 200))
[100.0, 100.0, 300.0, 200.0]
>>> convert_box([0, 0, 50, 50], "input_pixel", "pixel", image_size=(200, 100), input_size=(100, 50))
[0.0, 0.0, 100.0, 100.0]
>>> convert_box([10, 20, 5, 5], "pixel", "pixel", src_format="xywh")
[10.0, 20.0, 15.0, 25.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Frame = Literal["pixel", "input_pixel", "norm1000", "norm1"]
BoxFormat = Literal["xyxy", "xywh"]
FRAMES: tuple[str, ...] = ("pixel", "input_pixel", "norm1000", "norm1")
FORMATS: tuple[str, ...] = ("xyxy", "xywh")


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _scale(frame: str, image_size: Sequence[int] | None, input_size: Sequence[int] | None) -> tuple[float, float]:
    """Width and height of `frame` in its own units (one unit of norm1 is the whole image)."""
    if frame == "norm1":
        return 1.0, 1.0
    if frame == "norm1000":
        return 1000.0, 1000.0
    if frame == "pixel":
        if image_size is None:
            raise ValueError("the 'pixel' frame needs image_size (width, height) of the original image")
        return float(image_size[0]), float(image_size[1])
    if frame == "input_pixel":
        if input_size is None:
            raise ValueError("the 'input_pixel' frame needs input_size (width, height) of the resized model input")
        return float(input_size[0]), float(input_size[1])
    raise ValueError(f"unknown box frame '{frame}'; known frames: {', '.join(FRAMES)}")


def convert_box(
    box: Sequence[float],
    src_frame: str,
    dst_frame: str,
    *,
    image_size: Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
    src_format: str = "xyxy",
    dst_format: str = "xyxy",
) -> list[float]:
    """Convert one box between frames and formats; see the module docstring for the frames."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers, got {len(box)}")
    if src_format not in FORMATS or dst_format not in FORMATS:
        raise ValueError(f"box format must be one of {', '.join(FORMATS)}")
    xyxy = xywh_to_xyxy(box) if src_format == "xywh" else [float(v) for v in box]
    if src_frame != dst_frame:
        sw, sh = _scale(src_frame, image_size, input_size)
        dw, dh = _scale(dst_frame, image_size, input_size)
        xyxy = [xyxy[0] / sw * dw, xyxy[1] / sh * dh, xyxy[2] / sw * dw, xyxy[3] / sh * dh]
    return xyxy_to_xywh(xyxy) if dst_format == "xywh" else xyxy


def convert_point(
    point: Sequence[float],
    src_frame: str,
    dst_frame: str,
    *,
    image_size: Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
) -> list[float]:
    """Convert one (x, y) point between frames.

    >>> convert_point([50, 25], "input_pixel", "pixel", image_size=(200, 100), input_size=(100, 50))
    [100.0, 50.0]
    """
    x, y = (float(v) for v in point)
    sw, sh = _scale(src_frame, image_size, input_size)
    dw, dh = _scale(dst_frame, image_size, input_size)
    return [x / sw * dw, y / sh * dh]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two `xyxy` boxes in the same frame (0 when the union is empty).

    >>> box_iou([0, 0, 2, 2], [1, 1, 3, 3])
    0.14285714285714285
    """
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
