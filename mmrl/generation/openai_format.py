"""The OpenAI chat-completions wire format, both ways: request messages <-> `Prompt`, images <-> data URLs.

Shared by `mmrl serve` (which reads requests) and the HTTP client backend (which writes them), so the two agree.

>>> url = image_to_data_url(__import__("PIL.Image").Image.new("RGB", (2, 2), "red"))
>>> url.startswith("data:image/png;base64,"), load_image_url(url).size
(True, (2, 2))
"""

from __future__ import annotations

import base64
import binascii
import io
import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image

from mmrl.generation.types import Prompt


class RequestError(ValueError):
    """A request the server cannot serve as sent (answered 400 with this message)."""


MAX_IMAGE_PIXELS = 100_000_000  # a header claiming more is refused (decompression bombs)


def _open_image(data: bytes | str, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise RequestError(f"{where}: image of {image.width}x{image.height} pixels is too large")
        image.load()
        return image.convert("RGB")
    except RequestError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise RequestError(f"{where}: unreadable image ({err})") from None


def load_image_url(url: str, where: str = "image_url", image_dirs: Sequence[Path] | None = None) -> Image.Image:
    """A PIL image from a `data:image/...;base64,` URL, a `file://` URL or a local path (no network fetches).

    `image_dirs`: where local files may be read from. None (in-process callers) allows any path; a server passes the
    directories its operator allowed (none by default), so a client can never make it open an arbitrary file — the
    error then says nothing about whether the file exists."""
    if not isinstance(url, str) or not url:
        raise RequestError(f"{where}: expected a data URL or a local file path")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header or not payload:
            raise RequestError(f"{where}: only base64 data URLs are supported (data:image/png;base64,...)")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: the data URL is not valid base64") from None
        return _open_image(data, where)
    if url.startswith(("http://", "https://")):
        raise RequestError(f"{where}: remote image URLs are not fetched; send a data URL or a local file path")
    path = Path(unquote(urlparse(url).path)) if url.startswith("file://") else Path(url)
    if image_dirs is not None:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(d.resolve()) for d in image_dirs):
            raise RequestError(f"{where}: local image files are refused; send a data URL (the server's operator "
                               "can allow a directory with mmrl serve --image-dir DIR)")
        path = resolved
    if not path.is_file():
        raise RequestError(f"{where}: no such image file: {path}")
    return _open_image(str(path), where)


def messages_to_prompt(messages: Any, image_dirs: Sequence[Path] | None = None) -> Prompt:
    """An OpenAI `messages` list (text and `image_url` parts) as a `Prompt` with decoded PIL images (local files only
    under `image_dirs`, see `load_image_url`)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list of {role, content} objects")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise RequestError(f"{where}: expected an object with role system, user, assistant or developer")
        role = "system" if message["role"] == "developer" else message["role"]
        content = message.get("content")
        if content is None or isinstance(content, str):
            out.append({"role": role, "content": content or ""})
            continue
        if not isinstance(content, list):
            raise RequestError(f"{where}.content: expected a string or a list of parts")
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            at = f"{where}.content[{j}]"
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise RequestError(f"{at}.text: expected a string")
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                parts.append({"type": "image", "image": load_image_url(url, f"{at}.image_url", image_dirs)})
            elif kind == "image":
                parts.append({"type": "image", "image": load_image_url(part.get("image"), f"{at}.image", image_dirs)})
            else:
                raise RequestError(f"{at}: unsupported part type {kind!r} (use 'text' or 'image_url')")
        out.append({"role": role, "content": parts})
    return Prompt(out)


def image_to_data_url(image: Any) -> str:
    """A data URL for a PIL image (PNG) or an image file (its own bytes and type)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        kind = mimetypes.guess_type(path.name)[0] or "image/png"
        return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def prompt_to_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """A `Prompt` as OpenAI messages: image parts become `image_url` parts holding data URLs."""
    out = []
    for message in prompt.messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": image_to_data_url(p["image"])}}
                       if p.get("type") == "image" else {"type": "text", "text": p.get("text", "")} for p in content]
        out.append({"role": message["role"], "content": content})
    return out
