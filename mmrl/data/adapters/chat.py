"""Conversational formats: TRL, MM-EUREKA, VLM-R1, ShareGPT / LLaMA-Factory.

Prompts keep the images' order: `<image>` placeholders in text (ShareGPT, VLM-R1) stay where they are and
`mmrl.data.templates.build_messages` turns them into image slots; structured contents keep their `{"type": "image"}`
parts in place.
"""

from __future__ import annotations

import json
from typing import Any

from mmrl.data.adapters.base import Adapter, ConvertContext, register_adapter
from mmrl.data.answers import clean_answer, infer_task, strip_answer_tags
from mmrl.data.sample import Sample

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "model": "assistant", "bot": "assistant"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def normalize_messages(messages: list[dict[str, Any]], ctx: ConvertContext) -> tuple[list[dict[str, Any]], list]:
    """Roles -> user/assistant/system; structured image parts -> `{"type": "image"}` slots (their paths collected)."""
    out, images = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ctx.fail(f"message {index} is not an object")
        role = ROLES.get(str(message.get("role", message.get("from", ""))).lower())
        if role is None:
            raise ctx.fail(f"message {index} has an unknown role {message.get('role', message.get('from'))!r}")
        content = message.get("content", message.get("value"))
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image" or (isinstance(part, dict) and "image" in part and kind != "text"):
                    ref = part.get("image") or part.get("image_url") or part.get("path")
                    if isinstance(ref, dict):
                        ref = ref.get("url")
                    if ref is not None:
                        images.append(ctx.image(ref))
                    parts.append({"type": "image"})
                elif kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
            content = parts
        out.append({"role": role, "content": content if content is not None else ""})
    return out, images


def _split_turns(messages: list[dict[str, Any]], ctx: ConvertContext) -> tuple[Any, str | None]:
    """(prompt, last assistant text): a lone user turn becomes its text (or parts); a system turn keeps messages."""
    if messages and messages[-1]["role"] == "assistant":
        prompt_messages, response = messages[:-1], _text_of(messages[-1]["content"])
    else:
        prompt_messages, response = messages, None
    if not prompt_messages or prompt_messages[-1]["role"] != "user":
        raise ctx.fail("conversation has no user turn before the answer")
    if len(prompt_messages) == 1 and isinstance(prompt_messages[0]["content"], str):
        return prompt_messages[0]["content"], response
    return prompt_messages, response


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(_text_of(m["content"]) for m in prompt)


def _sample(ctx: ConvertContext, record: dict[str, Any], prompt: Any, answer: Any, images: list, response=None,
            task: str | None = None, meta: dict | None = None) -> Sample:
    return Sample(id=ctx.default_id(record), prompt=prompt, answer=answer,
                  task=task or infer_task(answer, None, _prompt_text(prompt)), images=images,
                  response=response if response and response.strip() != str(answer) else None, meta=meta or {})


# --- TRL: {"prompt": [messages], "image"|"images": ..., "solution"|"answer": ...} --------------------------------
def _detect_trl(record: dict[str, Any]) -> bool:
    return isinstance(record.get("prompt"), list) and any(k in record for k in ("solution", "answer", "completion"))


def _convert_trl(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    messages, inline = normalize_messages(record["prompt"], ctx)
    prompt, _ = _split_turns(messages, ctx)
    if "completion" in record and not any(k in record for k in ("solution", "answer")):
        completion, _ = normalize_messages(record["completion"], ctx) if isinstance(record["completion"], list) \
            else ([{"role": "assistant", "content": record["completion"]}], [])
        answer = clean_answer(_text_of(completion[-1]["content"]))
    else:
        answer = ctx.answer(record, "solution", "answer")
    images = inline or ctx.images(record.get("images", record.get("image")))
    return _sample(ctx, record, prompt, answer, images)


# --- MM-EUREKA: {"message": "<JSON string of messages with image paths>", "answer": ...} ----------------------
def _detect_mm_eureka(record: dict[str, Any]) -> bool:
    return isinstance(record.get("message"), str) and record["message"].lstrip().startswith("[")


def _convert_mm_eureka(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    try:
        raw = json.loads(record["message"])
    except json.JSONDecodeError as err:
        raise ctx.fail(f"field 'message' is not valid JSON ({err.msg})") from None
    messages, images = normalize_messages(raw, ctx)
    prompt, _ = _split_turns(messages, ctx)
    answer = ctx.answer(record, "answer", "solution")
    return _sample(ctx, record, prompt, answer, images)


# --- VLM-R1: {"id", "image": str|list, "conversations": [{"from": "human"}, {"from": "gpt"}], "accu_reward_method"}
def _detect_vlm_r1(record: dict[str, Any]) -> bool:
    return isinstance(record.get("conversations"), list) and ("image" in record or "accu_reward_method" in record)


def _convert_conversation(record: dict[str, Any], ctx: ConvertContext, images: list, key: str) -> Sample:
    messages, inline = normalize_messages(record[key], ctx)
    prompt, response = _split_turns(messages, ctx)
    if response is None or not response.strip():
        raise ctx.fail(f"record has no gold answer (no final assistant turn in '{key}')")
    answer = clean_answer(strip_answer_tags(response))
    meta = {k: record[k] for k in ("accu_reward_method", "system") if k in record}
    task = "grounding" if record.get("accu_reward_method") == "iou" else None
    return _sample(ctx, record, prompt, answer, inline or images, response=response, task=task, meta=meta)


def _convert_vlm_r1(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    return _convert_conversation(record, ctx, ctx.images(record.get("image")), "conversations")


# --- ShareGPT / LLaMA-Factory: {"conversations"|"messages": [...], "images": [...]} ------------------------------
def _detect_sharegpt(record: dict[str, Any]) -> bool:
    turns = record.get("conversations", record.get("messages"))
    return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict)


def _convert_sharegpt(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    key = "conversations" if "conversations" in record else "messages"
    return _convert_conversation(record, ctx, ctx.images(record.get("images", record.get("image"))), key)


TRL = Adapter("trl", _detect_trl, _convert_trl, "TRL conversational prompt + image(s) + solution")
MM_EUREKA = Adapter("mm_eureka", _detect_mm_eureka, _convert_mm_eureka, "MM-EUREKA message JSON string + answer")
VLM_R1 = Adapter("vlm_r1", _detect_vlm_r1, _convert_vlm_r1, "VLM-R1 conversations + image(s)")
SHAREGPT = Adapter("sharegpt", _detect_sharegpt, _convert_sharegpt, "ShareGPT / LLaMA-Factory conversations",
                   ("llama_factory",))
for _adapter in (MM_EUREKA, TRL, VLM_R1):
    register_adapter(_adapter)
