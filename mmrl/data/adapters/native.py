"""mmrl's own record format (what `mmrl build-data` writes) and a generic question/answer fallback.

Native: `{"id", "images", "prompt", "answer", "task", "choices", "response", "meta", "image_size", "box_frame",
"box_format"}` — only `prompt` and `answer` are required.
"""

from __future__ import annotations

from typing import Any

from mmrl.data.adapters.base import Adapter, ConvertContext, register_adapter
from mmrl.data.answers import clean_answer, infer_task
from mmrl.data.sample import Sample

NATIVE_FIELDS = {"id", "images", "prompt", "answer", "task", "choices", "response", "meta", "image_size",
                 "box_frame", "box_format"}


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [p.get("text", "") for p in content or [] if isinstance(p, dict)]
    return "\n".join(parts)


def _detect_native(record: dict[str, Any]) -> bool:
    return {"prompt", "answer"} <= set(record) and set(record) <= NATIVE_FIELDS


def _convert_native(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    if record.get("answer") in (None, ""):
        raise ctx.fail("record has no gold answer (field 'answer')")
    answer = clean_answer(record["answer"])
    choices = record.get("choices") or None
    size = record.get("image_size")
    return Sample(
        id=ctx.default_id(record),
        prompt=record["prompt"],
        answer=answer,
        task=record.get("task") or infer_task(answer, choices, _prompt_text(record["prompt"])),
        images=ctx.images(record.get("images")),
        choices=choices,
        image_size=tuple(size) if size else None,
        box_frame=record.get("box_frame") or "pixel",
        box_format=record.get("box_format") or "xyxy",
        response=record.get("response"),
        meta=dict(record.get("meta") or {}),
    )


QUESTION_KEYS = ("prompt", "question", "problem", "query", "instruction")
ANSWER_KEYS = ("answer", "solution", "ground_truth", "label", "gold")
IMAGE_KEYS = ("images", "image", "image_path", "file_name")


def _detect_generic(record: dict[str, Any]) -> bool:
    return any(k in record for k in QUESTION_KEYS) and any(k in record for k in ANSWER_KEYS)


def _convert_generic(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    question_key = next(k for k in QUESTION_KEYS if k in record)
    answer = ctx.answer(record, *ANSWER_KEYS)
    image_key = next((k for k in IMAGE_KEYS if k in record), None)
    choices = record.get("choices") or None
    used = {question_key, image_key, "id", "choices", *ANSWER_KEYS}
    return Sample(
        id=ctx.default_id(record),
        prompt=str(record[question_key]),
        answer=answer,
        task=infer_task(answer, choices, str(record[question_key])),
        images=ctx.images(record.get(image_key)) if image_key else [],
        choices=choices,
        meta={k: v for k, v in record.items() if k not in used and _jsonable(v)},
    )


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, dict, type(None)))


NATIVE = register_adapter(Adapter("mmrl", _detect_native, _convert_native, "mmrl's own format", ("native",)))
GENERIC = Adapter("generic", _detect_generic, _convert_generic, "any question/problem + answer/solution columns")
