"""Token bookkeeping of a growing conversation: what the chat template writes between a model turn and the next one.

A multi-turn episode keeps the tokens the model sampled exactly as sampled (re-rendering the conversation as text
and tokenizing it again can split them differently, and the log-probs would then belong to other tokens). Only the
environment's part is rendered: `ObservationTail.encode(observation, ended)` gives the tokens (images expanded by the
processor, with their pixel values, grid and token types) that follow a model turn: the rest of the turn's closing
(`<|im_end|>` was sampled, `\\n` was not; a turn cut by the length limit gets the whole closing), the user turn holding
the observation, and the generation prompt of the next assistant turn. It is read from the model's own chat template
by rendering a probe conversation with and without one more user message.
"""

from __future__ import annotations

from typing import Any

import torch

from mmrl.data.collate import TYPE_KEYS, _chat_text, _process
from mmrl.errors import UserError

_MARKER = "mmrl-turn-probe"


def template_tokens_in(tokenizer: Any, text: str) -> list[str]:
    """The tokenizer's special tokens (`<|im_end|>`, `<|im_start|>`, `<|vision_start|>`, ...) written in `text`.

    The processor parses them in an observation's text as the real tokens: an environment (or a policy whose action an
    environment echoes) could close the user turn and write a fake assistant turn, or open image slots. Observations
    holding them are refused (`bad_observation`), not escaped: a silent rewrite would change what the environment said.
    """
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials = {t.content for t in decoder.values() if getattr(t, "special", False)}
    specials |= set(getattr(tokenizer, "all_special_tokens", None) or ())
    return sorted(token for token in specials if token and token in text)


class ObservationTail:
    """Renders the environment's turns for one processor and chat template (see the module doc)."""

    def __init__(self, processor: Any, template_kwargs: dict[str, Any] | None = None) -> None:
        self.processor, self.template_kwargs = processor, template_kwargs
        self.tokenizer = getattr(processor, "tokenizer", processor)
        probe = [
            {"role": "user", "content": [{"type": "text", "text": "start"}]},
            {"role": "assistant", "content": [{"type": "text", "text": _MARKER}]},
        ]
        closed = _chat_text(processor, probe, add_generation_prompt=False, template_kwargs=template_kwargs)
        if _MARKER not in closed:
            raise UserError("env: this chat template does not render assistant turns; multi-turn episodes need it")
        self._probe, self._closed = probe, closed
        self.closing = closed[closed.rindex(_MARKER) + len(_MARKER) :]  # e.g. "<|im_end|>\n"

    def text(self, n_images: int, text: str, ended: str | None) -> str:
        """The tail as text with one image slot per image; `ended`: the text of the token that ended the model's turn
        (its end-of-turn), None when the turn was cut by the length limit."""
        content = [{"type": "image"} for _ in range(n_images)] + ([{"type": "text", "text": text}] if text else [])
        opened = _chat_text(
            self.processor,
            self._probe + [{"role": "user", "content": content}],
            add_generation_prompt=True,
            template_kwargs=self.template_kwargs,
        )
        if not opened.startswith(self._closed):
            raise UserError(
                "env: the chat template renders earlier turns differently once a user turn follows; "
                "multi-turn episodes cannot keep the sampled tokens under it"
            )
        closing = self.closing
        if ended is not None:
            head = closing.lstrip()
            closing = head[len(ended) :] if head.startswith(ended) else closing
        return closing + opened[len(self._closed) :]

    def encode(self, images: list[Any], text: str, ended: str | None) -> dict[str, torch.Tensor]:
        """The tail's processor output (batch dim 1): input_ids, token types, and pixel values / grid of its images."""
        encoded = _process(self.processor, self.text(len(images), text, ended), list(images))
        encoded.pop("attention_mask", None)
        if not any(key in encoded for key in TYPE_KEYS):
            encoded["mm_token_type_ids"] = torch.zeros_like(encoded["input_ids"])
        return encoded
