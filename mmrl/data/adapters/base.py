"""Adapter registry: each peer format is a `detect(record)` test and a `convert(record, ctx) -> Sample` function.

Detection runs on a dataset's first record and in registration order (most specific first); `format:` in a dataset
spec skips detection. Unknown formats fail with the list of known ones.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrl.data.answers import clean_answer
from mmrl.data.sample import Sample
from mmrl.errors import DataError, UserError
from mmrl.registry import Registry


@dataclass
class ConvertContext:
    """What an adapter needs besides the record: where it came from and how to resolve its images."""

    dataset: str  # dataset stem, used in default ids
    location: str  # "file.jsonl:12", used in error messages
    key: str  # line number / index / dict key
    base_dir: Path | None  # relative image paths resolve against this
    image_root: Path | None = None

    def default_id(self, record: dict[str, Any], *fields: str) -> str:
        for name in (*fields, "id"):
            value = record.get(name)
            if value not in (None, ""):
                return str(value)
        return f"{self.dataset}:{self.key}"

    def fail(self, message: str) -> DataError:
        return DataError(f"{self.location}: {message}")

    def image(self, value: Any) -> Any:
        """Resolve one image reference: relative path -> absolute path; `file://` URI -> path; bytes or a base64
        `data:` URL -> PIL; an http(s) URL is an error (mmrl never downloads during training)."""
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            if value.get("bytes"):
                return _open_bytes(value["bytes"])
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return _open_bytes(value)
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str):
            return value  # a PIL image (datasets Image feature) or something load_image will reject by name
        if value.startswith("data:"):
            return self._data_url(value)
        if value.lower().startswith(("http://", "https://")):
            raise self.fail(f"image {value[:120]}: remote images are not fetched; download them first and give "
                            "the local path")
        text = value[len("file://"):] if value.startswith("file://") else value
        path = Path(text).expanduser()
        root = self.image_root or self.base_dir
        if not path.is_absolute() and root is not None:
            path = root / path
        return str(path.absolute())

    def _data_url(self, url: str) -> Any:
        """`data:image/png;base64,...` -> a PIL image decoded in memory (no temporary file)."""
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise self.fail(f"image data URL '{url[:40]}...' is not base64 (expected data:image/...;base64,...)")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(f"image data URL '{url[:40]}...' has invalid base64 data") from None
        return _open_bytes(data)

    def images(self, value: Any) -> list[Any]:
        """Resolve an image field that may be missing, one reference, or a list (order kept)."""
        if value is None or value == "" or value == []:
            return []
        if isinstance(value, (list, tuple)):
            # An empty entry among images is never skipped: dropping it would shift every later image onto the
            # wrong `<image>` slot (or lose one silently when the prompt has no placeholders).
            for i, v in enumerate(value):
                if v is None or (isinstance(v, str) and not v.strip()):
                    raise self.fail(f"image {i} of {len(value)} is empty (null or \"\"); remove it or give its path")
            return [self.image(v) for v in value]
        return [self.image(value)]

    def answer(self, record: dict[str, Any], *fields: str) -> Any:
        """The cleaned gold answer from the first present field, or a DataError naming the fields."""
        for name in fields:
            if name in record and record[name] is not None and record[name] != "":
                return clean_answer(record[name])
        raise self.fail(f"record has no gold answer (expected one of: {', '.join(fields)})")


def _open_bytes(data: bytes) -> Any:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.filename = ""  # type: ignore[attr-defined]
        return image
    except Exception:  # keep the raw bytes: load_image reports the reason when images are checked
        return bytes(data)


@dataclass
class Adapter:
    name: str
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[dict[str, Any], ConvertContext], Sample]
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


# Names and aliases -> adapters, in registration order = detection order.
ADAPTERS: Registry[Adapter] = Registry("data format", "format")


def register_adapter(adapter: Adapter) -> Adapter:
    for name in (adapter.name, *adapter.aliases):
        ADAPTERS.add(name, adapter)
    return adapter


def known_formats() -> list[str]:
    return sorted({a.name for a in ADAPTERS.values()})


def get_adapter(name: str) -> Adapter:
    key = name.strip().lower().replace("-", "_")
    if key not in ADAPTERS:
        raise UserError(f"unknown data format '{name}'; known formats: {', '.join(known_formats())}")
    return ADAPTERS.get(key)


def detect_adapter(record: dict[str, Any], location: str) -> Adapter:
    seen = set()
    for adapter in ADAPTERS.values():
        if adapter.name in seen:
            continue
        seen.add(adapter.name)
        try:
            if adapter.detect(record):
                return adapter
        except (TypeError, AttributeError, KeyError):
            continue
    keys = ", ".join(sorted(record)[:12])
    raise UserError(f"{location}: unknown data format (record keys: {keys}); set `format:` in the dataset spec; "
                    f"known formats: {', '.join(known_formats())}")
