"""Hub ids without a network: one line at once instead of the hub client's minute of retries.

Asked for a hub id it has not cached, `huggingface_hub` retries each request five times with back-off (about 40 s
without a network) before transformers raises its error. mmrl first tries one TCP connection to the hub's endpoint
(a few seconds at most): when it fails, a cached id loads from the cache alone (`local_files_only`), and an id that
is not cached is a one-line `UserError` at once. Behind a proxy the check is skipped (the proxy decides what is
reachable), and with HF_HUB_OFFLINE=1 the hub client is offline already.
"""

from __future__ import annotations

import difflib
import os
import socket
from urllib.parse import urlparse

from mmrl.errors import UserError

CONNECT_TIMEOUT_S = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def unreachable_reason(timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the hub's endpoint cannot be reached (None when it accepts a connection, or a proxy is configured)."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:
        return f"{host}:{port}: {err.strerror or type(err).__name__}"


def is_cached(repo_id: str) -> bool:
    """Whether the hub cache holds `repo_id`'s config.json (so it can load without the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id: the loader's own error says so
        return False


def local_files_only(name_or_path: str, field: str = "model.name_or_path") -> bool:
    """For a hub id (not a local path): True when it must load from the cache alone (no network, but cached);
    raises a one-line UserError when there is no network and no cached copy. False: load as usual."""
    if os.path.exists(name_or_path) or _offline():
        return False
    reason = unreachable_reason()
    if reason is None:
        return False
    if is_cached(name_or_path):
        return True
    local = _local_path_hint(name_or_path)
    if local:
        raise UserError(
            f"{field}: '{name_or_path}' is not a directory ({local}), nor a cached Hugging Face id "
            f"(the hub cannot be reached: {reason})"
        )
    raise UserError(
        f"{field}: '{name_or_path}' is not in the Hugging Face cache and the hub cannot be reached "
        f"({reason}); download it where there is a network (hf download {name_or_path}) or give a local "
        "model directory"
    )


def _local_path_hint(name_or_path: str) -> str:
    """For `runs/grpo_tny`, whose folder `runs/` exists here: a mistyped local path (`runs/grpo_tiny`), which the
    hub message ("hf download runs/grpo_tny") would send the reader the wrong way for. Empty when no folder matches."""
    parent, name = os.path.split(os.path.normpath(name_or_path))
    if not parent or not os.path.isdir(parent):
        return ""
    close = difflib.get_close_matches(name, sorted(os.listdir(parent)), n=1)
    hint = f"did you mean '{os.path.join(parent, close[0])}'?" if close else "check the path"
    return f"{parent}/ has no '{name}'; {hint}"
