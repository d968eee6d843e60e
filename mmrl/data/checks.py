"""Check a dataset before training: everything that would crash or mislead later is found here, by sample.

`check_samples` looks at every sample and returns findings (it writes nothing anywhere):
- images: each one opens (see `mmrl.data.vision.load_image`); the first one's size fills `image_size` when unset;
- image slots: `<image>` placeholders / image parts of the prompt match the sample's images;
- gold boxes: a box is 4 finite numbers with x1 <= x2 and y1 <= y2; one declared in pixels lies within its image
  (1 px tolerance), and one whose coordinates are all <= 1 on a larger image is flagged as `norm1` mislabelled as pixels;
  `norm1` / `norm1000` boxes stay within their range;
- golds the rewards cannot score, when a `golds` check is given: `mmrl.rewards.gold_check` calls each reward on the
  gold itself (the rewards live in a higher room, so the check is handed in rather than imported here).

`check_for_training` is what the trainers call: errors stop the run before the model loads (naming file:line and sample
id), bad images follow `data.on_bad_image`, warnings are logged.

>>> from mmrl.data.sample import Sample
>>> report = check_samples([Sample(id="a", prompt="<image> and <image>", answer="2", task="count", images=[])],
...                        open_images=False)
>>> [str(f) for f in report.errors]
['sample a: prompt has 2 <image> placeholders but 0 images; make them match']
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmrl.data.boxes import FRAMES
from mmrl.data.sample import Sample
from mmrl.data.templates import build_messages
from mmrl.data.vision import load_image
from mmrl.errors import DataError

log = logging.getLogger(__name__)
# (sample, add) -> None: reports what is wrong with the sample's gold through `add(level, kind, message)`.
AddFinding = Callable[[str, str, str], None]
GoldCheck = Callable[[Sample, AddFinding], None]

PIXEL_TOLERANCE = 1.0  # a box may overhang its image by this many pixels (rounding in peer exports)
# Frames with a fixed range; `pixel` is bounded by the image, `input_pixel` by the model input (unknown before resizing).
FRAME_RANGES = {"norm1": 1.0, "norm1000": 1000.0}


@dataclass(frozen=True)
class Finding:
    """One problem with one sample: `level` is error (stops training) or warning (listed, does not stop)."""

    level: str
    kind: str  # images | slots | box | gold
    sample_id: str
    location: str  # "<dir>/train.jsonl:12"; empty for samples built in memory
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}sample {self.sample_id}: {self.message}"


@dataclass
class CheckReport:
    samples: int
    images: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def summary(self) -> str:
        bad_ids = {f.sample_id for f in self.errors}
        return (f"{self.samples} samples, {self.images} images: {len(self.errors)} errors in {len(bad_ids)} samples, "
                f"{len(self.warnings)} warnings")


# ---------------------------------------------------------------------------------------------------------- images
def _image_findings(sample: Sample, data_cfg: Any, add) -> None:
    limits = {k: getattr(data_cfg, k) for k in ("max_image_pixels", "min_image_side") if hasattr(data_cfg, k)}
    for index, src in enumerate(sample.images):
        try:
            image = load_image(src, **limits)
        except DataError as err:
            add("error", "images", f"image {index}: {err}")
            continue
        if index == 0:
            if sample.image_size is None:
                sample.image_size = image.size
            elif tuple(sample.image_size) != tuple(image.size):
                add("warning", "images", f"declared image_size {tuple(sample.image_size)} differs from the image's "
                    f"{image.size}; pixel boxes are checked against the declared size")


def _slot_findings(sample: Sample, add) -> None:
    try:
        build_messages(sample)
    except DataError as err:
        add("error", "slots", str(err).removeprefix(f"sample {sample.id}: "))
    except (KeyError, TypeError, StopIteration) as err:  # a chat prompt without a user turn, a message without a role
        add("error", "slots", f"prompt messages cannot be built ({type(err).__name__}: {err})")


# ----------------------------------------------------------------------------------------------------------- boxes
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _box_candidates(sample: Sample) -> list[Any] | None:
    """The gold's boxes as given (unvalidated), or None when the gold holds no box at all."""
    answer = sample.answer
    if isinstance(answer, dict):
        found = [answer[k] for k in ("bbox", "box", "bbox_2d") if k in answer]
        return found or None
    if isinstance(answer, (list, tuple)) and answer and all(isinstance(v, (list, tuple)) for v in answer):
        return list(answer)  # several boxes (multi-object grounding)
    if isinstance(answer, (list, tuple)) and answer and all(is_number(v) for v in answer):
        return [answer]
    if sample.task == "grounding":
        return [answer]  # a grounding gold must be a box; whatever it is gets reported below
    return None


def fmt_box(box: Sequence[Any]) -> str:
    return "[" + ", ".join(f"{v:g}" if is_number(v) else repr(v) for v in box) + "]"


def _box_findings(sample: Sample, add) -> None:
    candidates = _box_candidates(sample)
    if candidates is None:
        return
    frame = sample.box_frame or "pixel"
    if frame not in FRAMES:
        add("error", "box", f"unknown box_frame '{frame}'; use one of {', '.join(FRAMES)}")
        return
    for box in candidates:
        if not isinstance(box, (list, tuple)) or not all(is_number(v) for v in box):
            add("error", "box", f"gold {json.dumps(box, default=str)[:80]} is not a box; a box is 4 numbers "
                "[x1, y1, x2, y2]")
            continue
        if len(box) != 4:
            add("error", "box", f"gold {fmt_box(box)} has {len(box)} numbers; a box has 4 [x1, y1, x2, y2] "
                "(fix the record; it is not a list of answers)")
            continue
        if not all(math.isfinite(v) for v in box):
            add("error", "box", f"gold box {fmt_box(box)} has a non-finite coordinate")
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x1 > x2 or y1 > y2:
            add("error", "box", f"gold box {fmt_box(box)} has x1 > x2 or y1 > y2; give [x1, y1, x2, y2] (if it "
                "is [x, y, width, height], set box_format: xywh)")
            continue
        _frame_findings(sample, box, (x1, y1, x2, y2), frame, add)


def _frame_findings(sample: Sample, box, coords: tuple[float, ...], frame: str, add) -> None:
    x1, y1, x2, y2 = coords
    if frame in FRAME_RANGES:
        top = FRAME_RANGES[frame]
        slack = 1e-6 if frame == "norm1" else 1.0
        if min(coords) < -slack or max(coords) > top + slack:
            hint = "; is it in pixels? set box_frame: pixel" if max(coords) > top else ""
            add("error", "box", f"gold box {fmt_box(box)} lies outside 0..{top:g} of its declared frame "
                f"'{frame}'{hint}")
        return
    if frame != "pixel" or sample.image_size is None:
        return  # input_pixel: the model-input size is only known once images are resized
    width, height = (float(v) for v in sample.image_size)
    if max(abs(v) for v in coords) <= 1.0 and max(width, height) > 2:
        add("error", "box", f"gold box {fmt_box(box)} has every coordinate <= 1 on a {width:g}x{height:g} image "
            "but is declared in pixels; declare box_frame: norm1 for this dataset")
        return
    tol = PIXEL_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        hint = ("; is it in 0..1000? set box_frame: norm1000" if max(coords) <= 1000 else "")
        add("error", "box", f"gold box {fmt_box(box)} lies outside the {width:g}x{height:g} image (pixel frame, "
            f"{tol:g} px tolerance){hint}")


def _point_findings(sample: Sample, add) -> None:
    """GUI click golds `{"x": .., "y": ..}` in pixels lie on the screenshot."""
    answer = sample.answer
    if not (isinstance(answer, dict) and "x" in answer and "y" in answer) or sample.image_size is None:
        return
    if (sample.box_frame or "pixel") != "pixel":
        return
    x, y = answer["x"], answer["y"]
    if not (is_number(x) and is_number(y) and math.isfinite(x) and math.isfinite(y)):
        add("error", "box", f"gold point ({x!r}, {y!r}) is not two finite numbers")
        return
    width, height = sample.image_size
    if not (-PIXEL_TOLERANCE <= x <= width + PIXEL_TOLERANCE and -PIXEL_TOLERANCE <= y <= height + PIXEL_TOLERANCE):
        add("error", "box", f"gold point ({x:g}, {y:g}) lies outside the {width}x{height} screenshot (pixel frame)")


# ------------------------------------------------------------------------------------------------------------ entry
def check_samples(samples: Sequence[Sample], data_cfg: Any = None, golds: GoldCheck | None = None,
                  open_images: bool = True) -> CheckReport:
    """Findings for every sample (see the module docstring); writes nothing.

    `golds`: the check of each sample's gold against the rewards (`mmrl.rewards.gold_check.gold_check(rewards)`);
    None skips it.
    """
    report = CheckReport(samples=len(samples), images=sum(len(s.images) for s in samples))
    for sample in samples:
        location = str(sample.meta.get("source", ""))
        found: list[Finding] = []

        def add(level: str, kind: str, message: str, _id=sample.id, _loc=location, _found=found) -> None:
            _found.append(Finding(level, kind, _id, _loc, message))

        if open_images:
            _image_findings(sample, data_cfg, add)
        _slot_findings(sample, add)
        _box_findings(sample, add)
        _point_findings(sample, add)
        if golds is not None and not any(f.kind == "box" for f in found):  # a broken box is reported once
            golds(sample, add)
        report.findings.extend(found)
    return report


def check_for_training(samples: Sequence[Sample], data_cfg: Any, golds: GoldCheck | None = None) -> list[Sample]:
    """The trainers' data gate, before the model loads: raise on errors, apply `data.on_bad_image`, log warnings.

    Returns the samples to train on (with `on_bad_image: skip`, those whose images all open). Writes nothing.
    """
    report = check_samples(samples, data_cfg, golds)
    skip = getattr(data_cfg, "on_bad_image", "error") == "skip"
    image_bad = {f.sample_id for f in report.errors if f.kind == "images"}
    blocking = [f for f in report.errors if not (skip and f.kind == "images")]
    if blocking:
        more = f" (and {len(blocking) - 1} more; `mmrl data check` lists them all)" if len(blocking) > 1 else ""
        hint = "; fix the data or set data.on_bad_image=skip" if blocking[0].kind == "images" else ""
        raise DataError(f"{blocking[0]}{hint}{more}")
    for finding in report.warnings:
        log.warning("data: %s", finding)
    if not image_bad:
        return list(samples)
    fraction = len(image_bad) / max(1, len(samples))
    limit = getattr(data_cfg, "max_bad_fraction", 0.0)
    first = next(f for f in report.errors if f.kind == "images")
    if fraction > limit:
        raise DataError(f"{len(image_bad)} of {len(samples)} samples have bad images ({fraction:.1%}), above "
                        f"data.max_bad_fraction={limit}; first: {first}")
    log.warning("data: skipped %d of %d samples with bad images (first: %s)", len(image_bad), len(samples), first)
    return [s for s in samples if s.id not in image_bad]
