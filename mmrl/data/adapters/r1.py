"""R1-style formats: EasyR1 / verl, R1-V / Visual-RFT, Curr-ReFT, R1-V counting.

- EasyR1: `{"problem": "<image>...", "answer": "...", "images": [...]}` (math: geometry3k and friends).
- verl parquet: `{"prompt": [{"role": "user", "content": "<image>..."}], "images": [...],
  "reward_model": {"ground_truth": ...}, "data_source", "ability"}`.
- R1-V / Visual-RFT: `{"image", "problem", "solution": "<answer> 2 </answer>"}`.
- Curr-ReFT: `{"image", "problem", "solution", "task"}` (`task` names the curriculum task type).
- R1-V counting / GeoQA eval prompts: `{"image_path", "question", "ground_truth"}`.
"""

from __future__ import annotations

from typing import Any

from mmrl.data.adapters.base import Adapter, ConvertContext, register_adapter
from mmrl.data.adapters.chat import _prompt_text, _split_turns, merge_images, normalize_messages
from mmrl.data.answers import infer_task, is_number, options_in_text
from mmrl.data.sample import Sample

# Curr-ReFT's task names -> mmrl tasks (unknown names fall back to inference from the answer).
CURR_REFT_TASKS = {"detection": "grounding", "det": "grounding", "grounding": "grounding", "rec": "grounding",
                   "classify": "text", "classification": "text", "math": "math", "true_false": "yes_no",
                   "yes_no": "yes_no", "judge": "yes_no", "multi_choice": "mc", "mc": "mc", "choice": "mc",
                   "open": "text", "counting": "count", "count": "count"}


def _detect_verl(record: dict[str, Any]) -> bool:
    return isinstance(record.get("reward_model"), dict) and "prompt" in record


def _convert_verl(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    truth = record["reward_model"].get("ground_truth")
    if truth in (None, ""):
        raise ctx.fail("record has no gold answer (field 'reward_model.ground_truth')")
    prompt: Any = record["prompt"]
    images = ctx.images(record.get("images"))
    if isinstance(prompt, list):
        messages, inline = normalize_messages(prompt, ctx)
        prompt, _ = _split_turns(messages, ctx)
        images = merge_images(inline, images, ctx)
    answer = ctx.answer({"a": truth}, "a")
    ability = str(record.get("ability") or "")
    task = "math" if ability == "math" and infer_task(answer) in ("number", "math", "text") else None
    meta = {k: record[k] for k in ("data_source", "ability") if k in record}
    return Sample(id=ctx.default_id(record), prompt=prompt, answer=answer,
                  task=task or infer_task(answer, None, _prompt_text(prompt)),
                  images=images, meta=meta)


def _detect_easyr1(record: dict[str, Any]) -> bool:
    return "problem" in record and "answer" in record


def _convert_easyr1(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    answer = ctx.answer(record, "answer")
    problem = str(record["problem"])
    task = infer_task(answer, None, problem)
    if task in ("number", "text") and not options_in_text(problem):
        task = "math"  # EasyR1 problem/answer datasets are math (geometry3k, math12k); math-verify handles both
    return Sample(id=ctx.default_id(record), prompt=problem, answer=answer, task=task,
                  images=ctx.images(record.get("images", record.get("image"))))


def _detect_curr_reft(record: dict[str, Any]) -> bool:
    return {"problem", "solution"} <= set(record) and ("task" in record or "task_type" in record)


def _convert_curr_reft(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    sample = _convert_r1v(record, ctx)
    name = str(record.get("task", record.get("task_type")) or "").lower()
    sample.task = CURR_REFT_TASKS.get(name, sample.task)
    sample.meta["curr_reft_task"] = name
    return sample


def _detect_r1v(record: dict[str, Any]) -> bool:
    return {"problem", "solution"} <= set(record)


def _convert_r1v(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    answer = ctx.answer(record, "solution")
    problem = str(record["problem"])
    return Sample(id=ctx.default_id(record), prompt=problem, answer=answer, task=infer_task(answer, None, problem),
                  images=ctx.images(record.get("image", record.get("images"))),
                  response=record["solution"] if "<think>" in str(record["solution"]) else None)


def _detect_r1v_counting(record: dict[str, Any]) -> bool:
    return "question" in record and "ground_truth" in record


def _convert_r1v_counting(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    raw = record.get("ground_truth")
    answer = ctx.answer(record, "ground_truth")
    counting = isinstance(raw, int) or (is_number(answer) and "how many" in str(record["question"]).lower())
    task = "count" if counting else infer_task(answer, None, record["question"])
    if task in ("number", "text") and not counting:
        task = "math"  # GeoQA-style ground truths ("140°") are math answers
    return Sample(id=ctx.default_id(record), prompt=str(record["question"]), answer=answer, task=task,
                  images=ctx.images(record.get("image_path", record.get("image"))))


register_adapter(Adapter("verl", _detect_verl, _convert_verl, "verl parquet: prompt + reward_model.ground_truth"))
register_adapter(Adapter("curr_reft", _detect_curr_reft, _convert_curr_reft, "Curr-ReFT problem/solution/task/image"))
register_adapter(Adapter("r1v", _detect_r1v, _convert_r1v, "R1-V / Visual-RFT image/problem/solution",
                         ("visual_rft",)))
register_adapter(Adapter("easyr1", _detect_easyr1, _convert_easyr1, "EasyR1 problem/answer/images"))
register_adapter(Adapter("r1v_counting", _detect_r1v_counting, _convert_r1v_counting,
                         "R1-V counting / GeoQA question/ground_truth"))
