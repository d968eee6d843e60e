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


IMAGE_PARTS = ("image", "image_url", "input_image")
VIDEO_PARTS = ("video", "video_url", "input_video")
TEXT_PARTS = ("text", "input_text")


def _part_image_ref(part: dict[str, Any]) -> Any:
    """The image a structured part names (path, URI, data URL, bytes), or None for an empty TRL slot."""
    for key in ("image", "image_url", "url", "path"):
        ref = part.get(key)
        if isinstance(ref, dict) and "url" in ref:
            ref = ref["url"]  # OpenAI style {"url": ...}; an HF image dict {"bytes", "path"} goes to ctx.image whole
        if ref not in (None, ""):
            return ref
    return None


def normalize_messages(messages: list[dict[str, Any]], ctx: ConvertContext) -> tuple[list[dict[str, Any]], list]:
    """Roles -> user/assistant/system; structured image parts -> `{"type": "image"}` slots.

    Returns the messages and, per image slot in order, its resolved image or None when the slot names none (TRL
    fills those from the record's `images`, see `merge_images`). A part mmrl cannot read (video, audio, ...) rejects
    the record: dropping it would silently change what the model is asked.
    """
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
                if isinstance(part, str):
                    parts.append({"type": "text", "text": part})
                    continue
                if not isinstance(part, dict):
                    raise ctx.fail(f"message {index}: content part {part!r:.60} is not an object")
                kind = part.get("type") or ("image" if "image" in part or "image_url" in part else None)
                if kind in VIDEO_PARTS or (kind is None and "video" in part):
                    raise ctx.fail(f"message {index}: video inputs are not supported; extract frames as images "
                                   "or remove the record")
                if kind in IMAGE_PARTS:
                    ref = _part_image_ref(part)
                    images.append(ctx.image(ref) if ref is not None else None)
                    parts.append({"type": "image"})
                elif kind in TEXT_PARTS or (kind is None and "text" in part):
                    parts.append({"type": "text", "text": part.get("text", "")})
                else:
                    raise ctx.fail(f"message {index}: content part of type {kind!r} is not supported (text and "
                                   "image parts are)")
            content = parts
        out.append({"role": role, "content": content if content is not None else ""})
    return out, images


def merge_images(slots: list, listed: list, ctx: ConvertContext) -> list:
    """One image per slot: a slot naming its image keeps it; empty slots take the record's listed images in order.

    A record whose two sources disagree is rejected, never resolved by silently dropping one of them.
    """
    if not slots:
        return listed
    empty = sum(1 for ref in slots if ref is None)
    if empty == 0:
        if listed and [str(r) for r in listed] != [str(r) for r in slots]:
            raise ctx.fail(f"the prompt's image parts name {len(slots)} image(s) and the record's image field "
                           f"lists {len(listed)} other(s); keep one of the two lists")
        return slots
    if len(listed) != empty:
        raise ctx.fail(f"the prompt has {empty} image slot(s) without a path but the record's image field lists "
                       f"{len(listed)} image(s); make them match")
    queue = iter(listed)
    return [ref if ref is not None else next(queue) for ref in slots]


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
    images = merge_images(inline, ctx.images(record.get("images", record.get("image"))), ctx)
    return _sample(ctx, record, prompt, answer, images)


# --- MM-EUREKA: {"message": "<JSON string of messages with image paths>", "answer": ...} ----------------------
def _detect_mm_eureka(record: dict[str, Any]) -> bool:
    return isinstance(record.get("message"), str) and record["message"].lstrip().startswith("[")


def _convert_mm_eureka(record: dict[str, Any], ctx: ConvertContext) -> Sample:
    try:
        raw = json.loads(record["message"])
    except json.JSONDecodeError as err:
        raise ctx.fail(f"field 'message' is not valid JSON ({err.msg})") from None
    messages, inline = normalize_messages(raw, ctx)
    images = merge_images(inline, ctx.images(record.get("images", record.get("image"))), ctx)
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
    return _sample(ctx, record, prompt, answer, merge_images(inline, images, ctx), response=response, task=task,
                   meta=meta)


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
