"""The Sample record: one training or evaluation item, whatever format its dataset came in.

Every peer format is converted into a Sample by an adapter (`mmrl/data/adapters/`); nothing downstream knows which
format a dataset came in.

>>> s = Sample(id="clevr-1", prompt="How many objects are there?", answer="3", task="count", images=["a.png"])
>>> s.reward_columns()["answer"]
'3'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Tasks the accuracy reward and the evaluator dispatch on.
TASKS = ("math", "mc", "yes_no", "count", "number", "text", "grounding", "gui")


@dataclass
class Sample:
    """One item.

    - `id`: stable identifier, used in every error message and report about this item.
    - `prompt`: the user's text, or chat messages (`[{"role": "user", "content": [{"type": "image"}, {"type": "text",
      "text": ...}]}]`) whose image slots are filled from `images` in order.
    - `answer`: the gold answer: text, number, letter(s), box `[x1, y1, x2, y2]`, or an action dict.
    - `task`: one of `TASKS` (or a user-defined name a custom reward understands).
    - `images`: resolved paths (or PIL images), in the order they appear in the prompt.
    - `choices`: option texts for multiple choice, in letter order A, B, C...
    - `image_size`: `(width, height)` of the first original image; `input_size` is the model-input size after resizing.
    - `box_frame` / `box_format`: the frame and format `answer` boxes are given in (see `mmrl.data.boxes`).
    - `response`: a target response for SFT (e.g. `<think>...</think><answer>...</answer>`).
    - `meta`: everything else the source record had that a reward or report may use (precision, unit, category...).
    """

    id: str
    prompt: str | list[dict[str, Any]]
    answer: Any
    task: str = "text"
    images: list[Any] = field(default_factory=list)
    choices: list[str] | None = None
    image_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    box_frame: str = "pixel"
    box_format: str = "xyxy"
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def reward_columns(self) -> dict[str, Any]:
        """The fields a reward function receives as keyword columns (one value per sample)."""
        return {
            "id": self.id,
            "answer": self.answer,
            "task": self.task,
            "choices": self.choices,
            "image_size": self.image_size,
            "input_size": self.input_size,
            "box_frame": self.box_frame,
            "box_format": self.box_format,
            **{k: v for k, v in self.meta.items() if k not in {"answer", "task", "choices"}},
        }

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["images"] = [_image_ref(im) for im in self.images]
        return record


def _image_ref(image: Any) -> str:
    """A path for an image reference; in-memory images (parquet bytes, datasets) are described by their size."""
    if isinstance(image, (str, bytes, bytearray)) or not hasattr(image, "size"):
        return str(image) if not isinstance(image, (bytes, bytearray)) else f"<embedded image, {len(image)} bytes>"
    filename = getattr(image, "filename", None)
    return str(filename) if filename else f"<embedded image {image.size[0]}x{image.size[1]}>"
