"""Benchmark formats: MathVista and MathVerse.

MathVista multi-choice answers are the choice text; mmrl stores the letter (the prompt lists lettered options) and
keeps the text in `meta["answer_text"]`. MathVerse multi-choice answers are letters with the options inline.
"""

from __future__ import annotations

from typing import Any

from mmrl.data.adapters.base import Adapter, ConvertContext, register_adapter
from mmrl.data.answers import clean_answer, format_choices, infer_task, options_in_text
from mmrl.data.sample import Sample


def _detect_mathvista(record: dict[str, Any]) -> bool:
    return "question_type" in record and "answer_type" in record and "question" in record


def _convert_mathvista(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    answer = ctx.answer(record, "answer")
    meta = {k: record.get(k) for k in ("precision", "unit", "answer_type", "question_type")}
    meta.update({k: v for k, v in (record.get("metadata") or {}).items() if k in ("category", "source", "task")})
    choices = record.get("choices") or None
    question = record["question"]
    if record.get("question_type") == "multi_choice" and choices:
        if answer not in choices:
            raise ctx.fail(f"multi-choice answer {answer!r} is not one of the choices {choices}")
        meta["answer_text"] = answer
        answer, task = chr(65 + choices.index(answer)), "mc"
        question = format_choices(question, choices)
    else:
        task = "number" if record.get("answer_type") in ("integer", "float") else infer_task(answer)
    size = None
    metadata = record.get("metadata") or {}
    if metadata.get("img_width") and metadata.get("img_height"):
        size = (int(metadata["img_width"]), int(metadata["img_height"]))
    return Sample(id=ctx.default_id(record, "pid"), prompt=question, answer=answer, task=task,
                  images=ctx.images(record.get("image")), choices=choices, image_size=size, meta=meta)


def _detect_mathverse(record: dict[str, Any]) -> bool:
    return "problem_version" in record or ("query_cot" in record and "question" in record)


def _convert_mathverse(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    answer = ctx.answer(record, "answer")
    question = record["question"]
    choices = options_in_text(question) or None
    multi = str(record.get("question_type", "")).startswith("multi")
    task = "mc" if multi else ("number" if isinstance(answer, str) and infer_task(answer) == "number" else "math")
    meta = {k: record.get(k) for k in ("problem_version", "question_type", "problem_index")}
    meta.update({k: v for k, v in (record.get("metadata") or {}).items() if k in ("subject", "subfield", "source")})
    return Sample(id=ctx.default_id(record, "sample_index"), prompt=question, answer=clean_answer(answer), task=task,
                  images=ctx.images(record.get("image")), choices=choices if multi else None, meta=meta)


register_adapter(Adapter("mathverse", _detect_mathverse, _convert_mathverse, "MathVerse (question, answer letter)"))
register_adapter(Adapter("mathvista", _detect_mathvista, _convert_mathvista, "MathVista (question, choices, ...)"))
