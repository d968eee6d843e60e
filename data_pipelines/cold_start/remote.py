"""What the builders share about their models: redacted URLs, the API key check, request failures, fingerprints.

- `redact_url`: a model URL as it may be written (reports, logs, errors): no `user:pass@`, no query values
  (`?api_key=...`), no fragment.
- `check_api_key_env`: the variable named by `api_key_env` exists and can travel in an HTTP header; errors name the
  variable, never its value (nor the name itself where it may be a pasted key).
- `warn_endpoint_only`: one warning naming the endpoint-only settings (served_model, api_key_env, concurrency) a
  local-model stage was given and ignores.
- `classify`: a request error is either a *failure* (the endpoint could not answer: timeout, dropped connection,
  5xx / 429 after the client's retries, a refused key, a garbled reply, a 4xx refusal) — never cached, retried on
  the next run. A 4xx is a failure too: the same refusal of every request (n or max_tokens above the server's limit)
  is a setting to fix, and cached as rejections it would be final (exit 0, nothing kept, a re-run doing nothing).
- `fingerprint`: a short hash of everything that determines a cached result (model, sampling, the exact prompt,
  the image bytes), stored with each cache line so a changed config never reuses an old result.

>>> redact_url("https://bob:hunter2@api.example.com/v1?api_key=sk-1&api-version=2024-06-01#x")
'https://***@api.example.com/v1?api_key=***&api-version=2024-06-01'
>>> redact_url("runs/grpo/checkpoint"), redact_url("http://127.0.0.1:8000/v1"), redact_url("http://tok@h:x/v1")
('runs/grpo/checkpoint', 'http://127.0.0.1:8000/v1', 'http://***@h:***/v1')
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from mmrl.errors import ConfigError, UserError
from mmrl.generation import GenerationBackend, load_backend
from mmrl.generation.http import shown_env_name
from mmrl.generation.load import is_server_url

# Query parameters that never carry a secret (Azure's API version); every other query value is masked.
_PUBLIC_QUERY = {"api-version", "api_version"}
_HOST_PORT = re.compile(r"^[\w.-]+:\d+(/|$)")  # host:port[/path] with no scheme
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EndpointFailed(UserError):
    """Every item a run attempted failed to get an answer from the endpoint (exit code 1: nothing was wrong in the
    input; the finished items are cached and the failed ones are retried by the same command)."""

    exit_code = 1


def redact_url(model: str) -> str:
    """`model` with credentials masked when it is a URL; anything else unchanged."""
    if not is_server_url(model):
        return model
    parts = urlsplit(model)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = ("***@" if "@" in parts.netloc else "") + host
    try:
        port = parts.port
    except ValueError:  # not a number: shown masked rather than risk echoing whatever it is
        port = "***"
    if port is not None:
        netloc += f":{port}"
    query = "&".join(f"{k}={v if k.lower() in _PUBLIC_QUERY else '***'}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_api_key_env(name: str | None, where: str, model: str) -> None:
    """Raise a one-line `ConfigError` (naming the variable, never printing a value) unless the key is usable."""
    if not name:
        return
    if name not in os.environ:
        # `--api-key-env "$KEY"`: the shell put the key itself here; say which variable holds it, never the value.
        holders = sorted(k for k, v in os.environ.items() if v == name) if len(name) >= 8 else []
        if holders:
            raise ConfigError(f"{where} holds the value of the environment variable {holders[0]}, not a name; "
                              f"set {where} to {holders[0]}")
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{where} must be the NAME of an environment variable (letters, digits, _) that holds "
                              "the API key, not the key itself; export the key (e.g. as REASONER_API_KEY) and name it")
        shown = shown_env_name(name)
        if shown is None:  # a name that may be a pasted key (a long lower-case or hex run): never echoed to logs
            raise ConfigError(f"the environment variable that {where} names is not set (its value is not shown: it "
                              "does not look like a variable name; if it is the key itself, export the key as e.g. "
                              f"REASONER_API_KEY and name that); the API key for {redact_url(model)}")
        raise ConfigError(f"the environment variable {name} ({where}: the API key for {redact_url(model)}) is not "
                          f"set; export {name}=<key> and re-run")
    value = os.environ[name]
    if not value or value != value.strip() or not value.isascii() or not value.isprintable():
        raise ConfigError(f"the environment variable {name} ({where}) is empty or holds characters an HTTP header "
                          "cannot carry (spaces, a newline, non-ASCII); fix its value")


ENDPOINT_ONLY = ("served_model", "api_key_env", "concurrency")  # settings a local (in-process) model ignores


def warn_endpoint_only(where: str, given: Sequence[str], local_models: Sequence[str]) -> None:
    """One warning naming the endpoint-only settings `given` (names, never values: an api_key_env may hold a pasted
    key) that were set for the local, in-process `local_models`: a setting dropped without a word would look like it
    took effect."""
    if given:
        models = ", ".join(f"'{redact_url(m)}'" for m in dict.fromkeys(local_models))
        warnings.warn(f"{where}: {', '.join(given)} only apply to an http(s) endpoint; ignored for the local model "
                      f"{models} (remove them, or point the model at an endpoint)", UserWarning, stacklevel=3)


def open_backend(model: str, where: str, api_key_env: str | None = None, field: str = "model",
                 **kw: Any) -> GenerationBackend:
    """`load_backend` whose one-line errors show the URL redacted (the client's messages quote it verbatim) and
    name the builder's own setting `field` (the loader's messages say `model.name_or_path`, a training key)."""
    if is_server_url(model):
        check_api_key_env(api_key_env, where, model)
        kw["api_key_env"] = api_key_env
    try:
        return load_backend(model, **kw)
    except UserError as err:
        text = str(err).replace(model, redact_url(model))
        if text.startswith("model.name_or_path: "):
            text = f"{field}: " + text[len("model.name_or_path: "):]
        if _HOST_PORT.match(model):  # "127.0.0.1:8000/v1" was read as a hub id
            text = text.rstrip(".") + f"; an endpoint needs its scheme: http://{redact_url(model)}"
        raise type(err)(text) from None


def classify(err: Exception, remote: bool) -> tuple[str, bool] | None:
    """(reason, is_failure) for an error a request ended with after the client's retries; None: not a request
    error (a bug, or a mistake in the input: let it propagate). From an endpoint, an exception while reading its
    reply (an HTML error page with status 200, JSON without `choices`) is a failure too: the server's answer, not
    the item, is at fault."""
    import openai

    if isinstance(err, UserError):
        return None
    if isinstance(err, openai.APITimeoutError):
        return "timeout", True
    if isinstance(err, openai.APIConnectionError):
        return "connection", True
    if isinstance(err, openai.APIStatusError):
        return f"http_{err.status_code}", True
    if isinstance(err, openai.OpenAIError) or remote:
        return "bad_response", True
    return None


def check_reached(failures: Counter[str], ran: int, targets: dict[str, tuple[str, str]]) -> None:
    """Raise `EndpointFailed` when every one of the `ran` items attempted now failed. `failures`: counts by
    'stage:reason' (or 'reason' for a one-model builder, stage ''); `targets`: stage -> (model URL, its setting)."""
    if ran == 0 or sum(failures.values()) < ran:
        return
    stages: Counter[str] = Counter()
    for key, n in failures.items():
        stages[key.split(":", 1)[0] if ":" in key else ""] += n
    # Every stage that failed, in the builder's stage order: failures spread over several stages (and models) were
    # blamed on the most common one alone.
    failing = [stage for stage in targets if stages[stage]] or list(targets)
    urls = " / ".join(dict.fromkeys(redact_url(targets[stage][0]) for stage in failing))
    settings = [targets[stage][1] for stage in failing]
    setting = " / ".join(settings) + (" is" if len(settings) == 1 else " are")
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(failures.items()))
    raise EndpointFailed(f"no answer from {urls} for any of the {ran} items tried ({reasons}); check that the server "
                         f"is up and reachable, accepts the request's settings and {setting} right, then re-run the "
                         "same command (finished items are kept, failed ones are retried)")


def describe_model(model: str) -> str:
    """What identifies the weights behind `model`: the redacted URL, a preset/hub name, or a checkpoint directory
    with its weight files' sizes and modification times (a retrained checkpoint at the same path is another model)."""
    path = Path(model)
    if is_server_url(model) or not path.is_dir():
        return redact_url(model)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".pt"))
    return json.dumps([str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a rewritten file is read again
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _image_digest(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)) and Path(image).is_file():
        stat = Path(image).stat()
        return _file_digest(str(Path(image).resolve()), stat.st_size, stat.st_mtime_ns)
    if hasattr(image, "tobytes"):  # PIL
        return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
    return str(image)


def prompt_view(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages with each image part replaced by the hash of the image's content."""
    return [{**m, "content": [{"type": "image", "sha256": _image_digest(p["image"])} if p.get("type") == "image"
                              else p for p in m["content"]]} if isinstance(m.get("content"), list) else m
            for m in messages]


def fingerprint(**parts: Any) -> str:
    """A short stable hash of `parts` (JSON-able; pass prompts through `prompt_view` first)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
