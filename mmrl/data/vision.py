"""Load, validate and resize images — one code path for training, evaluation and demos.

- `load_image` opens a path, `file://` URI, bytes, HF image dict or PIL image; applies EXIF orientation and converts
  every mode (RGBA, P, L, CMYK, 16-bit) to RGB. A bad image raises `DataError` with the reason.
- `resize_for_model` follows the Qwen2-VL `smart_resize` rules (transformers' function): both sides multiples of 28, pixel count within
  `[min_pixels, max_pixels]`, aspect ratio kept as closely as possible.
- `check_images` applies `data.on_bad_image`: `error` stops naming the sample; `skip` writes `bad_images.jsonl` to the
  run directory, returns the good samples and aborts when more than `data.max_bad_fraction` are bad. A bad sample is
  never replaced by another one.

>>> from PIL import Image
>>> resize_for_model(Image.new("RGB", (100, 50)), min_pixels=28 * 28, max_pixels=56 * 56).size
(56, 28)
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mmrl.data.sample import Sample
from mmrl.errors import DataError

IMAGE_FACTOR = 28  # patch 14 x spatial merge 2 (Qwen2-VL / Qwen2.5-VL)
MAX_RATIO = 200  # the Qwen2-VL processor rejects more extreme aspect ratios
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
DEFAULT_MIN_IMAGE_SIDE = 2

# Truncated files must fail, not load half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = 28 * 28,
                 max_pixels: int = 448 * 448) -> tuple[int, int]:
    """(height, width) after resizing: sides multiples of `factor`, pixels within [min_pixels, max_pixels].

    The rule is transformers' own (the Qwen2-VL image processor's `smart_resize`, importable without torchvision), so
    mmrl resizes exactly as the processor would; only the aspect-ratio error is worded here.

    >>> smart_resize(50, 100, min_pixels=784, max_pixels=3136)
    (28, 56)
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as maintained

    if max(height, width) / max(1, min(height, width)) > MAX_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / max(1, min(height, width)):.0f} is above {MAX_RATIO}")
    return maintained(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _describe(src: Any) -> str:
    if isinstance(src, Image.Image):
        return getattr(src, "filename", "") or "<PIL image>"
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, dict):
        return str(src.get("path") or f"<{len(src.get('bytes') or b'')} bytes>")
    return str(src)


def image_source_path(src: Any) -> Path | None:
    """The local file behind an image reference (path, `file://` URI, HF dict with a path), if any."""
    if isinstance(src, dict):
        if src.get("bytes"):
            return None
        src = src.get("path")
    if isinstance(src, Path):
        return src
    if isinstance(src, str):
        return Path(src[len("file://"):]) if src.startswith("file://") else Path(src)
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white (what a viewer shows)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale the actual range to 0..255 instead of clipping at 255.
        lo, hi = image.getextrema()
        scale = 255.0 / max(1, hi - lo)
        return image.point(lambda v: (v - lo) * scale).convert("L").convert("RGB")
    if image.mode == "F":
        return image.convert("L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(src: Any, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               min_image_side: int = DEFAULT_MIN_IMAGE_SIDE) -> Image.Image:
    """Open an image as RGB with EXIF orientation applied, or raise `DataError` saying why it cannot be used.

    `src`: a path, `file://` URI, bytes, `{"bytes": ..., "path": ...}` (Hugging Face image feature) or a PIL image.
    """
    where = _describe(src)
    if isinstance(src, Image.Image):
        image = src
    else:
        if isinstance(src, dict) and src.get("bytes"):
            src = src["bytes"]
        if isinstance(src, (bytes, bytearray)):
            if not src:
                raise DataError(f"{where}: empty image bytes")
            handle: Any = io.BytesIO(src)
        else:
            if isinstance(src, str) and src.lower().startswith(("http://", "https://")):
                raise DataError(f"{where}: remote images are not fetched; download them first and give the local path")
            path = image_source_path(src)
            if path is None:
                raise DataError(f"{where}: not an image reference (expected a path, URI, bytes or PIL image)")
            if not path.is_file():
                raise DataError(f"{path}: image file not found")
            if path.stat().st_size == 0:
                raise DataError(f"{path}: empty file (0 bytes)")
            handle = str(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_image_pixels
                try:
                    image = Image.open(handle)
                finally:
                    Image.MAX_IMAGE_PIXELS = previous
        except UnidentifiedImageError:
            raise DataError(f"{where}: not a readable image (unknown or corrupt format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"{where}: header claims a huge image, above data.max_image_pixels="
                            f"{max_image_pixels}; raise that limit if the image is genuine") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            # Some decoders read data while opening: a cut-short WebP fails here ("could not create decoder object"),
            # a PNG/JPEG cut inside its header with "Truncated File Read".
            raise DataError(f"{where}: truncated or corrupt image data ({_first_line(err)})") from None
    width, height = image.size
    if width * height > max_image_pixels:
        raise DataError(f"{where}: header claims {width}x{height} pixels, above data.max_image_pixels="
                        f"{max_image_pixels}; raise that limit if the image is genuine")
    if min(width, height) < min_image_side:
        raise DataError(f"{where}: image is {width}x{height} pixels, smaller than data.min_image_side={min_image_side}")
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise DataError(f"{where}: aspect ratio {width}x{height} is above {MAX_RATIO} (Qwen-VL cannot encode it)")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"{where}: truncated or corrupt image data ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def sample_where(sample: Sample) -> str:
    """`sample <id>` plus the record's file and line where the reader recorded it (`meta["source"]`)."""
    source = sample.meta.get("source") if isinstance(sample.meta, dict) else None
    return f"sample {sample.id} ({source})" if source else f"sample {sample.id}"


def resize_for_model(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize with the Qwen2-VL smart_resize rules (sides multiples of 28, pixels within bounds), bicubic."""
    height, width = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _limits(data_cfg: Any) -> dict[str, int]:
    return {
        "max_image_pixels": getattr(data_cfg, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        "min_image_side": getattr(data_cfg, "min_image_side", DEFAULT_MIN_IMAGE_SIDE),
    }


def prepare_sample_images(sample: Sample, data_cfg: Any) -> list[Image.Image]:
    """Load and resize every image of `sample`; set `image_size` (original, if unset) and `input_size` (resized).

    Raises `DataError` naming the sample id when an image cannot be used.
    """
    min_pixels = getattr(data_cfg, "min_pixels", 28 * 28)
    max_pixels = getattr(data_cfg, "max_pixels", 448 * 448)
    out = []
    for index, src in enumerate(sample.images):
        try:
            image = load_image(src, **_limits(data_cfg))
        except DataError as err:
            raise DataError(f"{sample_where(sample)}: image {index}: {err}") from None
        resized = resize_for_model(image, min_pixels, max_pixels)
        if index == 0:
            if sample.image_size is None:
                sample.image_size = image.size
            sample.input_size = resized.size
        out.append(resized)
    return out


def _first_problem(sample: Sample, data_cfg: Any) -> dict[str, Any] | None:
    for index, src in enumerate(sample.images):
        try:
            image = load_image(src, **_limits(data_cfg))
        except DataError as err:
            return {"id": sample.id, "source": sample.meta.get("source"), "image_index": index,
                    "path": _describe(src), "reason": str(err)}
        if index == 0 and sample.image_size is None:
            sample.image_size = image.size
    return None


def find_bad_images(samples: Sequence[Sample], data_cfg: Any = None) -> list[dict[str, Any]]:
    """Open every image of every sample; one problem dict (id, image_index, path, reason) per bad sample."""
    return [p for p in (_first_problem(s, data_cfg) for s in samples) if p is not None]


def check_images(samples: Sequence[Sample], data_cfg: Any, run_dir: str | Path | None = None) -> list[Sample]:
    """Apply `data.on_bad_image` to `samples` and return the usable ones (see the module docstring)."""
    problems = find_bad_images(samples, data_cfg)
    if not problems:
        return list(samples)
    policy = getattr(data_cfg, "on_bad_image", "error")
    first = problems[0]
    first_where = f"sample {first['id']} ({first['source']})" if first.get("source") else f"sample {first['id']}"
    if policy == "error":
        more = f" (and {len(problems) - 1} more bad samples)" if len(problems) > 1 else ""
        raise DataError(f"{first_where}: {first['reason']}{more}; fix the data or set data.on_bad_image=skip")
    report = None
    if run_dir is not None:
        report = Path(run_dir) / "bad_images.jsonl"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("".join(json.dumps(p) + "\n" for p in problems))
    fraction = len(problems) / max(1, len(samples))
    limit = getattr(data_cfg, "max_bad_fraction", 0.0)
    if fraction > limit:
        where = f"; see {report}" if report else ""
        raise DataError(f"{len(problems)} of {len(samples)} samples have bad images ({fraction:.1%}), above "
                        f"data.max_bad_fraction={limit}; first: {first_where}: {first['reason']}{where}")
    logging.getLogger(__name__).warning("skipped %d of %d samples with bad images (report: %s)", len(problems),
                                        len(samples), report or "no run dir")
    bad_ids = {p["id"] for p in problems}
    return [s for s in samples if s.id not in bad_ids]
