"""`data:` — where samples come from and how their images are prepared."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from mmrl.config.base import Section


class DatasetSpec(Section):
    path: str = Field(..., description="Local JSONL/JSON/parquet file, imagefolder directory, or a datasets spec/hub id.")
    format: str = Field("auto", description="Peer format of the records ('auto' detects it); see `mmrl data show --help`.")
    split: str | None = Field(None, description="Split for datasets.load_dataset specs (e.g. 'train').")
    weight: float = Field(1.0, gt=0, description="Sampling weight when several datasets are mixed.")
    limit: int | None = Field(None, ge=1, description="Use at most this many records.")
    task: str | None = Field(None, description="Force the task of every record (else inferred from the format).")
    box_frame: Literal["pixel", "input_pixel", "norm1000", "norm1"] | None = Field(
        None, description="Frame of the gold boxes in this dataset (default: the format's convention, else 'pixel')."
    )
    box_format: Literal["xyxy", "xywh"] | None = Field(
        None, description="Format of the gold boxes in this dataset (default: the format's convention, else 'xyxy')."
    )
    image_root: str | None = Field(None, description="Directory image paths are relative to (default: the file's).")


# apply_chat_template's arguments that mmrl passes itself (data.chat_template_kwargs holds template variables only).
RENDER_ARGUMENTS = frozenset({
    "conversation", "messages", "add_generation_prompt", "continue_final_message", "tokenize", "return_dict",
    "return_tensors", "return_assistant_tokens_mask", "padding", "truncation", "max_length",
})


def _as_specs(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    return [{"path": v} if isinstance(v, str) else v for v in value]


class DataConfig(Section):
    train: list[DatasetSpec] = Field(default_factory=list, description="Training dataset(s): a path, a spec, or a list.")
    eval: list[DatasetSpec] = Field(default_factory=list, description="Held-out dataset(s) for evaluation.")
    min_pixels: int = Field(28 * 28, ge=28 * 28, description="Resize images to at least this many pixels (the Qwen2-VL smart_resize rule).")
    max_pixels: int = Field(448 * 448, ge=28 * 28, description="Resize images to at most this many pixels (the Qwen2-VL smart_resize rule).")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="'error': stop before training naming the sample; 'skip': report and skip it."
    )
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="With 'skip': abort when more than this are bad.")
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="Reject images whose header claims more pixels than this (decompression bombs)."
    )
    min_image_side: int = Field(2, ge=1, description="Reject images with a side shorter than this (e.g. 1x1 placeholders).")
    max_prompt_length: int = Field(2048, ge=16, description="Reject (by id) prompts longer than this many tokens.")
    system_prompt: str | None = Field(None, description="System message prepended to every prompt.")
    prompt_suffix: str | None = Field(None, description="Text appended to every user prompt (e.g. format instructions).")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Variables for the model's chat template, e.g. {enable_thinking: false} for "
        "Qwen3's. Whether the generation prompt then opens a <think> block is read from the rendered template "
        "(docs/models.md: model families).")
    shuffle: bool = Field(True, description="Shuffle the training order each epoch (seeded by trainer.seed).")

    _as_list = field_validator("train", "eval", mode="before")(classmethod(lambda cls, v: _as_specs(v)))

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_variables_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        # These are apply_chat_template's own arguments, which mmrl sets: given here, every prompt render would fail
        # (or return token ids instead of the prompt's text).
        taken = sorted(set(value) & RENDER_ARGUMENTS)
        if taken:
            raise ValueError(f"{', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by mmrl, not a template "
                             "variable; give only the template's own variables (e.g. enable_thinking)")
        return value
