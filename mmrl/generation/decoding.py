"""Token ids to text, in one place: which ids end a completion, which are removed from its text, where stop strings cut.

Texts are decoded with `skip_special_tokens=False` and only end-of-turn / padding tokens are removed, so tags such as
`<think>` and `<answer>` survive whatever the tokenizer marks as special (skipping special tokens silently zeroes
every format reward when the tags are registered as special tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# Tokens removed from decoded texts besides the model's EOS and pad ids (end of turn / padding of Qwen-style
# tokenizers). Reasoning tags must survive: rewards read them.
STRIP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# Tags the rewards read, which some tokenizers register as special tokens: never a template token.
REASONING_TAGS = frozenset({"<think>", "</think>", "<answer>", "</answer>"})


def template_token_ids(tokenizer: Any, chat_template: str | None, vocab: int, banned: Sequence[int] = ()) -> list[int]:
    """The special tokens the chat template writes (`<|im_start|>`, `<|vision_start|>`, Gemma's `<start_of_turn>`...).
    A completion that samples one has left its answer (it opens a turn or an image of its own), so it ends there, as
    at EOS, and the token never reaches its text; the rollout counts them (`rollout/template_token_stops`). Special
    tokens an answer may hold (Qwen's `<|box_start|>`, which no template writes), reasoning tags and image
    placeholders (never sampled) are not among them.

    >>> class Tok:
    ...     all_special_tokens = ["<|im_start|>", "<|box_start|>"]
    ...     added_tokens_decoder = {}
    ...     def convert_tokens_to_ids(self, token): return {"<|im_start|>": 7, "<|box_start|>": 8}[token]
    >>> template_token_ids(Tok(), "{{ '<|im_start|>' + message['role'] }}", vocab=10)
    [7]
    """
    if not chat_template:
        return []
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special.update(t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
                   if getattr(t, "special", False))
    ids: set[int] = set()
    for token in special - REASONING_TAGS:
        token_id = tokenizer.convert_tokens_to_ids(token) if token in chat_template else None
        if isinstance(token_id, int) and 0 <= token_id < vocab and token_id not in banned:
            ids.add(token_id)
    return sorted(ids)


def template_stops(backend: Any, last_ids: Iterable[int]) -> int:
    """How many completions a template token ended (their last ids given; see `template_token_ids`)."""
    return sum(1 for i in map(int, last_ids) if i in backend.template_ids and i not in backend.eos_ids)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end a completion: the generation config's EOS ids and the tokenizer's, inside the vocabulary."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids: set[int] = set()
    gen = getattr(inner, "generation_config", None)
    value = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids.update([value] if isinstance(value, int) else list(value or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = _vocab_size(model)
    return sorted(int(i) for i in ids if 0 <= i < vocab)


def _vocab_size(model: Any) -> int:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(inner.get_output_embeddings().weight.shape[0])


class TextDecoder:
    """Decodes completion ids the same way everywhere (rollouts, eval, serving, streaming)."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], pad_id: int) -> None:
        self.tokenizer = tokenizer
        strip = {pad_id, *eos_ids}
        for token in STRIP_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id:
                strip.add(token_id)
        self.strip_ids = frozenset(strip)

    def text(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(t) for t in ids if int(t) not in self.strip_ids], skip_special_tokens=False)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded), and whether one was found.

    >>> cut_at_stop("a</answer> b", ("</answer>",))
    ('a', True)
    """
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (a stream must not show them yet).

    >>> held_back("answer: </ans", ("</answer>",))
    5
    """
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


def attach_token_rules(backend: Any, model: Any, processor: Any) -> None:
    """Give a backend the token rules every backend shares, so they are decided in one place: its `tokenizer`,
    end-of-turn `eos_ids`, `pad_id`, `banned_ids` (image/video placeholders, never sampled: a completion holding one
    breaks the training forward), `template_ids` (`template_token_ids`), `end_ids` (EOS and template ids: what ends
    a completion) and the text `decoder` (which removes them)."""
    from mmrl.data.collate import end_of_turn_id
    from mmrl.models.tokens import placeholder_token_ids

    backend.tokenizer = getattr(processor, "tokenizer", processor)
    backend.eos_ids = eos_token_ids(model, backend.tokenizer)
    # The token the chat template closes an assistant turn with ends a completion even where the checkpoint's
    # generation_config does not list it (Gemma's tokenizer EOS is <eos>, its turns end <end_of_turn>): SFT learns it
    # as the end of the response (`encode_one`), so a rollout that did not stop there would run to max length.
    turn_end = end_of_turn_id(processor) if hasattr(processor, "apply_chat_template") else None
    vocab = _vocab_size(model)
    if isinstance(turn_end, int) and 0 <= turn_end < vocab and turn_end not in backend.eos_ids:
        backend.eos_ids = sorted([*backend.eos_ids, turn_end])
    pad = backend.tokenizer.pad_token_id
    backend.pad_id = pad if pad is not None else backend.eos_ids[0]
    backend.banned_ids = placeholder_token_ids(model, backend.tokenizer)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    templates = [getattr(owner, "chat_template", None) for owner in (processor, backend.tokenizer)]
    backend.template_ids = template_token_ids(backend.tokenizer, "\n".join(t for t in templates if isinstance(t, str)),
                                              inner.get_output_embeddings().weight.shape[0], backend.banned_ids)
    backend.end_ids = sorted({*backend.eos_ids, *backend.template_ids})  # what ends a completion
    backend.decoder = TextDecoder(backend.tokenizer, backend.end_ids, backend.pad_id)
