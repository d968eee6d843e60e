"""What every demo shares: safe launch settings, upload checks that answer in the page, and drawing.

Safe by default: bound to 127.0.0.1, no share link, a bounded queue, uploads capped in size (Gradio rejects larger
files before they reach a handler) and checked by `read_upload` (type, truncation, pixel count), no extra
`allowed_paths` (the app serves only its own uploads and outputs), error details off (a handler's message, never a
stack trace).
"""

from __future__ import annotations

import functools
import html
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mmrl.data.vision import load_image
from mmrl.errors import DataError

log = logging.getLogger("mmrl.demos")

DEFAULT_HOST = "127.0.0.1"
MAX_UPLOAD_MB = 20
MAX_UPLOAD_PIXELS = 40_000_000  # 40 MP: a phone photo fits, a 100 MP decompression bomb does not
MIN_UPLOAD_SIDE = 2  # a 1x1 tracking pixel is not a picture a model can look at
QUEUE_SIZE = 16
# Pictures are shown at least this many pixels on their long side: a 56-pixel training image drawn at its own size is
# a speck on the page. Small images are enlarged by a whole factor, pixels kept square and sharp (nearest neighbour).
DISPLAY_SIDE = 448
MAX_SEED = 2**32 - 1
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"]


class DemoInputError(Exception):
    """A problem with what the user gave; its message is shown in the page as it is."""


def read_upload(path: str | os.PathLike | None, what: str = "image") -> Image.Image:
    """The uploaded image as RGB, or `DemoInputError` saying in one line why it cannot be used.

    The message names the file by its base name only: the server's temporary paths are nobody's business.
    """
    if path is None or str(path) == "":
        raise DemoInputError(f"upload an {what} first (PNG, JPEG, WebP, BMP or GIF)")
    path = Path(path)
    name = path.name
    if path.suffix.lower() not in IMAGE_TYPES:
        raise DemoInputError(f"{name}: not an image file; upload one of {', '.join(IMAGE_TYPES)}")
    try:
        size = path.stat().st_size
    except OSError:
        raise DemoInputError(f"{name}: the upload could not be read; upload it again") from None
    if size > MAX_UPLOAD_MB * 1024 * 1024:
        raise DemoInputError(f"{name}: {size / 2**20:.1f} MB is above the {MAX_UPLOAD_MB} MB upload limit")
    try:
        return load_image(path, max_image_pixels=MAX_UPLOAD_PIXELS, min_image_side=MIN_UPLOAD_SIDE)
    except DataError as err:
        reason = str(err).split(": ", 1)[-1]
        # The loader speaks to a training config (data.max_image_pixels, data.min_image_side); the page speaks to
        # whoever uploaded the file.
        if "huge image" in reason or "pixels, above" in reason:
            reason = f"too many pixels (the demo takes at most {MAX_UPLOAD_PIXELS // 1_000_000} megapixels)"
        elif "smaller than" in reason:
            reason = f"{reason.split(',')[0]}; upload an image at least {MIN_UPLOAD_SIDE} pixels on each side"
        raise DemoInputError(f"{name}: {reason}") from None
    except (OSError, SyntaxError, ValueError):
        # Some decoders fail while opening rather than while reading (a truncated WebP: "could not create decoder
        # object"); that is the same bad upload, not a server error.
        raise DemoInputError(f"{name}: not a readable image (truncated or corrupt); upload the whole file") from None


def shown_errors(n_outputs: int, status_index: int) -> Callable:
    """Decorate a handler so that any failure becomes one line in its status output (index `status_index` of
    `n_outputs`), the other outputs left as they are (`gr.skip()`); nothing reaches the page as a traceback.

    A `DemoInputError` is shown as it is; anything else as `error: Type: message` and logged in full on the server.
    Works for plain handlers and for generators (streaming).
    """

    def decorate(fn: Callable) -> Callable:
        import inspect

        def failure(err: Exception) -> tuple:
            import gradio as gr

            if isinstance(err, DemoInputError):
                message = f"⚠️ {err}"
            else:
                log.exception("demo handler %s failed", fn.__name__)
                first = str(err).splitlines()[0] if str(err) else ""
                message = f"⚠️ error: {type(err).__name__}: {first}"[:500]
            out: list[Any] = [gr.skip()] * n_outputs
            out[status_index] = html.escape(message, quote=False)  # the status is Markdown: a quoted <tag> stays text
            return tuple(out)

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def stream(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001  (shown in the page, logged in full)
                    yield failure(err)

            return stream

        @functools.wraps(fn)
        def plain(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001
                return failure(err)

        return plain

    return decorate


def launch(app: Any, host: str = DEFAULT_HOST, port: int | None = None, share: bool = False,
           prevent_thread_lock: bool = False, queue_size: int = QUEUE_SIZE) -> Any:
    """Serve `app` with the safe settings (see the module docstring); returns what `Blocks.launch` returns."""
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=f"{MAX_UPLOAD_MB}mb",
        allowed_paths=[],
        show_error=False,
        inbrowser=False,
        quiet=True,
        ssr_mode=False,
        prevent_thread_lock=prevent_thread_lock,
    )


# ---------------------------------------------------------------- drawing
def _width(image: Image.Image) -> int:
    return max(2, round(max(image.size) / 150))


def display_factor(size: tuple[int, int]) -> int:
    """The whole factor that brings an image of `size` to `DISPLAY_SIDE` on its long side (1 when it is that big).

    >>> display_factor((56, 56)), display_factor((160, 120)), display_factor((640, 480))
    (8, 3, 1)
    """
    return max(1, -(-DISPLAY_SIDE // max(1, max(size))))


def for_display(image: Image.Image) -> Image.Image:
    """`image` enlarged by `display_factor` (nearest neighbour: the pixels the model sees, only bigger)."""
    k = display_factor(image.size)
    return image if k == 1 else image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


def draw_marks(image: Image.Image, boxes: Iterable[tuple[Sequence[float], str, str]] = (),
               points: Iterable[tuple[Sequence[float], str, str]] = ()) -> Image.Image:
    """`image` enlarged for display (`for_display`) with `(xyxy, colour, label)` boxes and `(xy, colour, label)` points
    drawn; coordinates are pixels of `image` (scaled here, so lines and labels stay thin and readable on a small
    image); outside the image they are clipped to it so a wild prediction still shows where it points."""
    out = for_display(image).copy()
    k = out.width / image.width
    draw = ImageDraw.Draw(out)
    width = _width(out)
    w, h = out.size
    font = ImageFont.load_default(size=max(12, round(max(w, h) / 30)))

    def clip(x: float, y: float) -> tuple[float, float]:
        return min(max(x * k, 0), w - 1), min(max(y * k, 0), h - 1)

    for box, colour, label in boxes:
        x1, y1 = clip(box[0], box[1])
        x2, y2 = clip(box[2], box[3])
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=width)
        if label:
            draw.text((x1 + width, y1 + width), label, fill=colour, font=font)
    for point, colour, label in points:
        x, y = clip(point[0], point[1])
        r = 3 * width
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=width)
        draw.line([x - 2 * r, y, x + 2 * r, y], fill=colour, width=max(1, width // 2))
        draw.line([x, y - 2 * r, x, y + 2 * r], fill=colour, width=max(1, width // 2))
        if label:
            draw.text((x + r + 2, y + r + 2), label, fill=colour, font=font)
    return out


def image_input(gr: Any, elem_id: str, label: str = "image") -> Any:
    """The upload box every image demo uses: a file picker limited to image types, given to handlers as a path
    (the handler decodes it with `read_upload`, so a bad file gets a message instead of a Gradio error)."""
    return gr.File(label=label, file_types=list(IMAGE_TYPES), file_count="single", type="filepath", elem_id=elem_id)


def image_preview(gr: Any, elem_id: str, label: str = "preview (small images enlarged)") -> Any:
    """Where an upload is shown once it is read (the file box above it only names the file)."""
    return gr.Image(label=label, type="pil", interactive=False, elem_id=elem_id)


def preview_of(path: str | None) -> tuple[str, Image.Image | None]:
    """(status, the upload enlarged for display); a file that cannot be read says why in the status."""
    if not path:
        return "", None
    return "", for_display(read_upload(path))


def template_controls(gr: Any, prefix: str, model: Any, open_: bool = False) -> list[Any]:
    """The prompt template of `model` (its run's system prompt and suffix, or R1's), editable; where it came from."""
    with gr.Accordion("prompt template", open=open_):
        gr.Markdown(html.escape(model.template_origin, quote=False), elem_id=f"{prefix}-template-origin")
        return [
            gr.Textbox(value=model.system_prompt, label="system prompt (empty: none)", lines=2,
                       elem_id=f"{prefix}-system"),
            gr.Textbox(value=model.prompt_suffix, label="prompt suffix, appended to the question (empty: none)",
                       elem_id=f"{prefix}-suffix"),
        ]


__all__ = ["DEFAULT_HOST", "DISPLAY_SIDE", "DemoInputError", "display_factor", "draw_marks", "for_display",
           "image_input", "image_preview", "launch", "preview_of", "read_upload", "shown_errors", "template_controls"]


def sampling_controls(gr: Any, prefix: str, max_new_tokens: int = 128) -> list[Any]:
    """Temperature (0 = greedy), top-p, top-k, max new tokens and seed, in a closed accordion."""
    with gr.Accordion("sampling", open=False):
        return [
            gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)", elem_id=f"{prefix}-temperature"),
            gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", elem_id=f"{prefix}-top-p"),
            gr.Slider(0, 200, value=0, step=1, label="top-k (0 = off)", elem_id=f"{prefix}-top-k"),
            gr.Slider(1, 2048, value=max_new_tokens, step=1, label="max new tokens", elem_id=f"{prefix}-max-new"),
            gr.Number(value=0, precision=0, label="seed", elem_id=f"{prefix}-seed"),
        ]


def to_sampling(temperature: float, top_p: float, top_k: float, max_new_tokens: float, seed: float | None) -> Any:
    """The page's sampling controls as a `Sampling` (checked: the page's sliders already bound them)."""
    from demos._model import Sampling

    if max_new_tokens is None or int(max_new_tokens) < 1:
        raise DemoInputError("max new tokens must be at least 1")
    # The seed box takes any number; the sampler's generator takes a 64-bit integer (1e30 overflowed in the sampler).
    if seed is not None and not (math.isfinite(seed) and 0 <= seed <= MAX_SEED and float(seed).is_integer()):
        raise DemoInputError(f"seed: give a whole number from 0 to {MAX_SEED} (got {seed})")
    return Sampling(temperature=float(temperature or 0.0), top_p=float(top_p or 1.0), top_k=int(top_k or 0),
                    max_new_tokens=int(max_new_tokens), seed=int(seed or 0))  # fmt: skip
