"""The cold-start builder's config: one YAML (+ `key=value` overrides) validated by pydantic, one-line errors.

>>> cfg = ColdStartConfig.model_validate({"data": "d.jsonl", "out": "o", "stages": {
...     "describe": {"model": "tiny"}, "reason": {"model": "http://127.0.0.1:8000/v1"}}})
>>> cfg.stages.pseudo_cot.model, cfg.stages.reason.concurrency, cfg.filter.ngram
('tiny', 4, 4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, model_validator

from data_pipelines.inputs import MAX_NEW_TOKENS, MAX_SEED
from mmrl.config.base import NumbersNotBools
from mmrl.config.loader import load_yaml_chain, parse_override
from mmrl.errors import ConfigError

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
STAGES = ("pseudo_cot", "describe", "reason")
# The placeholders each stage's prompt file must contain (filled with str.replace, so LaTeX braces stay as they are).
PLACEHOLDERS = {"pseudo_cot": ("{question}",), "describe": ("{question}", "{pseudo_cot}"),
                "reason": ("{question}", "{description}")}


class _Strict(NumbersNotBools):  # `concurrency: true` is an error, not 1
    model_config = ConfigDict(extra="forbid")


class StageConfig(_Strict):
    """One stage's model and prompt. `model`: a preset name, checkpoint directory or an `http(s)://.../v1` URL."""

    model: str = Field("tiny", min_length=1)
    prompt: str | None = None  # a prompt file; None: the shipped default for the stage
    served_model: str | None = None  # the model name an endpoint expects (default: its first model)
    api_key_env: str | None = None  # the NAME of the environment variable holding the key, never the key
    concurrency: int = Field(4, ge=1, le=512)
    max_retries: int = Field(3, ge=0, le=20)  # HTTP retries (429, 5xx, timeouts, dropped connections), with backoff
    timeout: float = Field(120.0, gt=0)  # seconds per HTTP attempt
    attempts: int = Field(2, ge=1, le=10)  # tries per item when the reply is malformed or the request fails
    max_new_tokens: int = Field(512, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0)
    seed: int | None = Field(0, ge=0, le=MAX_SEED)


class Stages(_Strict):
    pseudo_cot: StageConfig | None = None  # default: the `describe` stage's model (the same VLM)
    describe: StageConfig = StageConfig()
    reason: StageConfig = StageConfig(max_new_tokens=2048)

    @model_validator(mode="after")
    def _same_vlm(self) -> Stages:
        if self.pseudo_cot is None:
            self.pseudo_cot = self.describe.model_copy(update={"prompt": None})
        return self


class FilterConfig(_Strict):
    """Rule-based quality checks on the reasoner's reply (after the answer verified)."""

    min_think_words: int = Field(1, ge=0)
    max_think_words: int = Field(4096, ge=1)
    ngram: int = Field(4, ge=1)
    max_repeat_ratio: float = Field(0.5, ge=0, le=1)  # share of repeated n-grams in the think block
    max_language_mix: float = Field(0.1, ge=0, le=1)  # share of letters outside the dominant script
    near_duplicate: float = Field(0.9, gt=0, le=1)  # word-trigram Jaccard to an earlier kept target


class ColdStartConfig(_Strict):
    data: str = Field(min_length=1)  # any dataset mmrl reads (JSONL, JSON, parquet, ...)
    out: str = Field(min_length=1)  # output directory: train.jsonl, report.json, lengths.png, cache.jsonl
    limit: int | None = Field(None, ge=1)
    stages: Stages = Stages()
    filter: FilterConfig = FilterConfig()

    def prompt_text(self, stage: str) -> str:
        cfg = getattr(self.stages, stage)
        path = Path(cfg.prompt) if cfg.prompt else PROMPT_DIR / f"{stage}.txt"
        if not path.is_file():
            raise ConfigError(f"stages.{stage}.prompt: no such file {path}; name an existing prompt file")
        text = path.read_text(encoding="utf-8")
        # Header lines (the source citation) start with '#' and are not sent.
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
        missing = [p for p in PLACEHOLDERS[stage] if p not in body]
        if missing:
            raise ConfigError(f"{path}: the {stage} prompt must contain {', '.join(missing)}")
        return body


def _error_line(err: dict[str, Any], source: str) -> str:
    dotted = ".".join(str(p) for p in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return f"{source}: unknown key '{dotted}'; see data_pipelines/cold_start/config.py for the valid keys"
    if err.get("type") == "missing":
        return f"{source}: {dotted} is required; add it"
    return f"{source}: {dotted}: {err.get('msg', 'invalid value')} (got {err.get('input')!r})"


def load_cold_start_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> ColdStartConfig:
    """YAML (with `extends:`) then `key.path=value` overrides, validated; a one-line `ConfigError` on a problem."""
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such config file")
        data = load_yaml_chain(path, {})
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[parts[-1]] = value
    try:
        cfg = ColdStartConfig.model_validate(data)
    except ValidationError as err:
        source = "command line" if overrides else str(path or "config")
        raise ConfigError(_error_line(err.errors(include_url=False)[0], source)) from None
    for stage in STAGES:
        cfg.prompt_text(stage)  # fail before any model loads
    return cfg
