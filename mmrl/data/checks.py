"""Check a dataset before training: everything that would crash or mislead later is found here, by sample.

`check_samples` looks at every sample and returns findings (it writes nothing anywhere):
- images: each one opens (see `mmrl.data.vision.load_image`); the first one's size fills `image_size` when unset;
- image slots: `<image>` placeholders / image parts of the prompt match the sample's images;
- gold boxes: a box is 4 finite numbers with x1 <= x2 and y1 <= y2; one declared in pixels lies within its image
  (1 px tolerance), and one whose coordinates are all <= 1 on a larger image is flagged as `norm1` mislabelled as pixels;
  `norm1` / `norm1000` boxes stay within their range;
- golds the rewards cannot score: each reward is called on the gold itself (written as the completion
  `<answer>GOLD</answer>`); a None means the reward can never score this sample. The rewards are the run's
  (`--config`) or, without one, the reward the sample's task implies (the `accuracy` reward's tasks, `gui_action` for gui).

`check_for_training` is what the trainers call: errors stop the run before the model loads (naming file:line and sample
id), bad images follow `data.on_bad_image`, warnings are logged.

>>> from mmrl.data.boxes import FRAMES
from mmrl.data.sample import Sample
>>> report = check_samples([Sample(id="a", prompt="<image> and <image>", answer="2", task="count", images=[])],
...                        open_images=False, rewards=[])
>>> [str(f) for f in report.errors]
['sample a: prompt has 2 <image> placeholders but 0 images; make them match']
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmrl.data.boxes import FRAMES
from mmrl.data.sample import Sample
from mmrl.data.templates import build_messages
from mmrl.data.vision import load_image
from mmrl.errors import DataError

log = logging.getLogger(__name__)

PIXEL_TOLERANCE = 1.0  # a box may overhang its image by this many pixels (rounding in peer exports)
# Frames with a fixed range; `pixel` is bounded by the image, `input_pixel` by the model input (unknown before resizing).
FRAME_RANGES = {"norm1": 1.0, "norm1000": 1000.0}
# Built-in reward a task implies when no run config is given (the accuracy reward's tasks score with `accuracy`).
GUI_REWARD = "gui_action"


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
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _box_candidates(sample: Sample) -> list[Any] | None:
    """The gold's boxes as given (unvalidated), or None when the gold holds no box at all."""
    answer = sample.answer
    if isinstance(answer, dict):
        found = [answer[k] for k in ("bbox", "box", "bbox_2d") if k in answer]
        return found or None
    if isinstance(answer, (list, tuple)) and answer and all(isinstance(v, (list, tuple)) for v in answer):
        return list(answer)  # several boxes (multi-object grounding)
    if isinstance(answer, (list, tuple)) and answer and all(_is_number(v) for v in answer):
        return [answer]
    if sample.task == "grounding":
        return [answer]  # a grounding gold must be a box; whatever it is gets reported below
    return None


def _fmt_box(box: Sequence[Any]) -> str:
    return "[" + ", ".join(f"{v:g}" if _is_number(v) else repr(v) for v in box) + "]"


def _box_findings(sample: Sample, add) -> None:
    candidates = _box_candidates(sample)
    if candidates is None:
        return
    frame = sample.box_frame or "pixel"
    if frame not in FRAMES:
        add("error", "box", f"unknown box_frame '{frame}'; use one of {', '.join(FRAMES)}")
        return
    for box in candidates:
        if not isinstance(box, (list, tuple)) or not all(_is_number(v) for v in box):
            add("error", "box", f"gold {json.dumps(box, default=str)[:80]} is not a box; a box is 4 numbers "
                "[x1, y1, x2, y2]")
            continue
        if len(box) != 4:
            add("error", "box", f"gold {_fmt_box(box)} has {len(box)} numbers; a box has 4 [x1, y1, x2, y2] "
                "(fix the record; it is not a list of answers)")
            continue
        if not all(math.isfinite(v) for v in box):
            add("error", "box", f"gold box {_fmt_box(box)} has a non-finite coordinate")
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x1 > x2 or y1 > y2:
            add("error", "box", f"gold box {_fmt_box(box)} has x1 > x2 or y1 > y2; give [x1, y1, x2, y2] (if it "
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
            add("error", "box", f"gold box {_fmt_box(box)} lies outside 0..{top:g} of its declared frame "
                f"'{frame}'{hint}")
        return
    if frame != "pixel" or sample.image_size is None:
        return  # input_pixel: the model-input size is only known once images are resized
    width, height = (float(v) for v in sample.image_size)
    if max(abs(v) for v in coords) <= 1.0 and max(width, height) > 2:
        add("error", "box", f"gold box {_fmt_box(box)} has every coordinate <= 1 on a {width:g}x{height:g} image "
            "but is declared in pixels; declare box_frame: norm1 for this dataset")
        return
    tol = PIXEL_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        hint = ("; is it in 0..1000? set box_frame: norm1000" if max(coords) <= 1000 else "")
        add("error", "box", f"gold box {_fmt_box(box)} lies outside the {width:g}x{height:g} image (pixel frame, "
            f"{tol:g} px tolerance){hint}")


def _point_findings(sample: Sample, add) -> None:
    """GUI click golds `{"x": .., "y": ..}` in pixels lie on the screenshot."""
    answer = sample.answer
    if not (isinstance(answer, dict) and "x" in answer and "y" in answer) or sample.image_size is None:
        return
    if (sample.box_frame or "pixel") != "pixel":
        return
    x, y = answer["x"], answer["y"]
    if not (_is_number(x) and _is_number(y) and math.isfinite(x) and math.isfinite(y)):
        add("error", "box", f"gold point ({x!r}, {y!r}) is not two finite numbers")
        return
    width, height = sample.image_size
    if not (-PIXEL_TOLERANCE <= x <= width + PIXEL_TOLERANCE and -PIXEL_TOLERANCE <= y <= height + PIXEL_TOLERANCE):
        add("error", "box", f"gold point ({x:g}, {y:g}) lies outside the {width}x{height} screenshot (pixel frame)")


# ------------------------------------------------------------------------------------------------------------ golds
def gold_as_completion(answer: Any, tags: Sequence[str] | None = ("<answer>", "</answer>")) -> str:
    """The gold written as a model would answer it (inside the reward's answer `tags`), so a reward can be asked to
    score its own gold."""
    if isinstance(answer, str):
        text = answer
    elif isinstance(answer, (list, tuple)) and answer and all(_is_number(v) for v in answer):
        text = _fmt_box(answer)
    elif isinstance(answer, (list, tuple)) and answer and all(isinstance(v, str) for v in answer):
        text = answer[0]  # several acceptable answers: any one of them must score
    else:
        text = json.dumps(answer, default=str)
    if not tags or len(tags) != 2:
        return text  # a reward reading the whole completion gets the bare answer
    return f"<think>checking the gold answer</think>{tags[0]}{text}{tags[1]}"


def rewards_for_task(task: str) -> list[dict[str, Any]]:
    """The reward a sample's task implies when no run config is given ([] when no built-in one scores it)."""
    from mmrl.rewards.accuracy import ACCURACY_TASKS

    if task in ACCURACY_TASKS:
        return [{"name": "accuracy"}]
    if task == "gui":
        return [{"name": GUI_REWARD}]
    return []


def _spec_fields(spec: Any) -> tuple[str, dict[str, Any], float, float]:
    if isinstance(spec, str):
        return spec, {}, 1.0, 5.0
    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
    return get("name"), dict(get("kwargs", None) or {}), float(get("weight", 1.0)), float(get("timeout_s", 5.0))


@functools.lru_cache(maxsize=1)
def _warm_verifier() -> None:
    """Import math-verify and build its parser once, outside any time limit: on a loaded machine the first parse
    alone can take seconds, which would turn a good gold into a spurious timeout warning."""
    from math_verify import parse

    parse("$1$")


def _gold_findings(sample: Sample, rewards: Sequence[Any] | None, add) -> None:
    from mmrl.rewards.registry import get_reward
    from mmrl.rewards.safe import call_with_timeout

    _warm_verifier()

    specs = rewards_for_task(sample.task) if rewards is None else list(rewards)
    if rewards is None and not specs:
        add("warning", "gold", f"no built-in reward scores task '{sample.task}'; check the gold against your run's "
            "rewards with --config RUN.yaml")
        return
    columns = {k: [v] for k, v in sample.reward_columns().items()}
    for spec in specs:
        name, kwargs, weight, timeout_s = _spec_fields(spec)
        if weight == 0:
            continue  # zero-weight components are reported by the trainer but never block an item
        completion = gold_as_completion(sample.answer, kwargs.get("tags", ("<answer>", "</answer>")))
        outcome = call_with_timeout(get_reward(name), timeout_s, [completion], **columns, **kwargs)
        if outcome.status == "timeout":
            add("warning", "gold", f"reward '{name}' took over {timeout_s:g}s on the gold itself; every item of "
                "this sample may time out")
        elif outcome.status != "ok":
            add("error", "gold", f"reward '{name}' fails on this sample's gold ({outcome.message.splitlines()[0]})"
                if outcome.message else f"reward '{name}' fails on this sample's gold")
        elif not isinstance(outcome.value, (list, tuple)) or len(outcome.value) != 1:
            add("error", "gold", f"reward '{name}' returned {outcome.value!r:.60} for one completion")
        elif outcome.value[0] is None:
            add("error", "gold", f"reward '{name}' cannot score the gold {json.dumps(sample.answer, default=str)[:80]} "
                f"(task '{sample.task}'): the item would always be unscorable; fix the gold or the task")


# ------------------------------------------------------------------------------------------------------------ entry
def check_samples(samples: Sequence[Sample], data_cfg: Any = None, rewards: Sequence[Any] | None = None,
                  open_images: bool = True) -> CheckReport:
    """Findings for every sample (see the module docstring); writes nothing.

    `rewards`: reward specs (RewardSpec, dicts or names) to check every gold against; None infers each sample's reward
    from its task; [] skips the gold check.
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
        if not any(f.kind == "box" for f in found):  # a broken box is reported once, not again as unscorable
            _gold_findings(sample, rewards, add)
        report.findings.extend(found)
    return report


def check_for_training(samples: Sequence[Sample], data_cfg: Any, rewards: Sequence[Any] | None = None) -> list[Sample]:
    """The trainers' data gate, before the model loads: raise on errors, apply `data.on_bad_image`, log warnings.

    Returns the samples to train on (with `on_bad_image: skip`, those whose images all open). Writes nothing.
    """
    report = check_samples(samples, data_cfg, rewards)
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
