"""The OpenAI-compatible HTTP backend: `mmrl serve`, vLLM's server or a provider, through the `openai` client.

Requests run `concurrency` at a time; the client retries 408/409/429/5xx answers, connection errors and timeouts with
exponential backoff (`max_retries`), each attempt bounded by `timeout` seconds. Images travel as data URLs. The API
key is read from the environment variable named by `api_key_env` and never printed; neither is an `api_key_env` that
does not look like a variable name (it may be the key itself, pasted there).

Remote servers report text, not token ids: `Completion.token_ids` is empty here, `logprobs` is filled when asked for.

>>> backend = load_backend("http://127.0.0.1:8000/v1")  # doctest: +SKIP
>>> backend.generate([Prompt.from_question("2+2?")], SamplingParams(n=2, temperature=0.7, seed=0))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mmrl.errors import UserError
from mmrl.generation.openai_format import prompt_to_messages
from mmrl.generation.types import Completion, Prompt, SamplingParams
from mmrl.models.interface import THINK_CLOSE, THINK_OPEN, reply_turn

# A conventional variable name: upper-case words of at most 16 characters joined by "_" (OPENAI_API_KEY). Anything else
# given as api_key_env may be the key itself pasted there by mistake, and error messages end up in logs.
_CONVENTIONAL_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]{0,15}(?:_[A-Z0-9]{1,16}){0,7}")


def shown_env_name(name: str) -> str | None:
    """`name` when it may be printed (it looks like a variable name), None when it might be a secret.

    >>> shown_env_name("OPENAI_API_KEY"), shown_env_name("sk-proj-abc123"), shown_env_name("a3f9c0d1e2b4a5f6c7d8")
    ('OPENAI_API_KEY', None, None)
    """
    return name if _CONVENTIONAL_ENV_NAME.fullmatch(name) else None


class OpenAIBackend:
    """`GenerationBackend` over an OpenAI-compatible `/v1` endpoint."""

    def __init__(self, base_url: str, *, served_model: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 8, max_retries: int = 4, timeout: float = 120.0) -> None:
        from openai import OpenAI

        if concurrency < 1:
            raise UserError(f"concurrency must be >= 1 (got {concurrency})")
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                shown = shown_env_name(api_key_env)
                what = (f"the environment variable {shown}" if shown else "the environment variable api_key_env names "
                        "(not shown: it does not look like a variable name; if it is the key itself, export the key "
                        "as e.g. OPENAI_API_KEY and give that name)")
                raise UserError(f"{what} (the API key for {base_url}) is not set")
        # A local server needs no key; the client insists on a non-empty one.
        self.client = OpenAI(base_url=base_url, api_key=key or "not-needed", max_retries=max_retries,
                             timeout=timeout)
        self.base_url = base_url
        self.concurrency = concurrency
        self.model = served_model or self._first_model()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend({self.base_url!r}, model={self.model!r})"

    def _first_model(self) -> str:
        from openai import OpenAIError

        try:
            models = [m.id for m in self.client.models.list()]
        except OpenAIError as err:
            raise UserError(f"{self.base_url}: cannot list models ({type(err).__name__}); is the server running? "
                            "Or pass served_model=") from None
        if not models:
            raise UserError(f"{self.base_url}: the server lists no models; pass served_model=")
        return models[0]

    def _request(self, prompt: Prompt, params: SamplingParams, stream: bool = False) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model, "messages": prompt_to_messages(prompt), "n": params.n,
            "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed
        if params.logprobs and not stream:
            request["logprobs"] = True
        # vLLM (and mmrl serve) extensions, sent only when used so strict providers don't refuse the request.
        extra = {k: v for k, v in (("top_k", params.top_k), ("min_tokens", params.min_new_tokens),
                                   ("stop_token_ids", list(params.stop_token_ids))) if v}
        if extra:
            request["extra_body"] = extra
        if stream:
            request["stream"] = True
        return request

    def _one(self, prompt: Prompt, params: SamplingParams) -> list[Completion]:
        response = self.client.chat.completions.create(**self._request(prompt, params))
        out = []
        # The server's token count, when it gives one for a single completion (remote replies carry no token ids).
        usage = getattr(response, "usage", None)
        extra = ({"completion_tokens": usage.completion_tokens}
                 if usage is not None and usage.completion_tokens is not None and len(response.choices) == 1 else {})
        for choice in sorted(response.choices, key=lambda c: c.index):
            logprobs = None
            if params.logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
                logprobs = [float(t.logprob) for t in choice.logprobs.content]
            # The model's whole turn: a reasoning parser's separate reasoning, or the <think> the prompt opened
            text = reply_turn(choice.message.content or "", _reasoning(choice.message), choice.finish_reason == "length")
            out.append(Completion(token_ids=[], text=text,
                                  finish_reason="length" if choice.finish_reason == "length" else "stop",
                                  logprobs=logprobs, extra=dict(extra)))
        return out

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        if len(prompts) == 1:  # in the caller's thread: a builder's daemon worker must not leave a pool thread behind
            return [self._one(prompts[0], params)]  # that the interpreter's exit waits for (a second Ctrl-C)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(prompts)))) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))

    def stream(self, prompt: Prompt, params: SamplingParams) -> Generator[str, None, Completion]:
        if params.n != 1:
            raise ValueError(f"stream: n must be 1 (got {params.n})")
        parts: list[str] = []
        finish = "stop"
        thinking = False  # inside reasoning a server's parser streams apart: sent as the turn's <think> block
        for chunk in self.client.chat.completions.create(**self._request(prompt, params, stream=True)):
            for choice in chunk.choices:
                reasoning = _reasoning(choice.delta) if choice.delta is not None else None
                content = choice.delta.content if choice.delta is not None else None
                pieces = []
                if reasoning:
                    pieces += [f"{THINK_OPEN}\n", reasoning] if not thinking else [reasoning]
                    thinking = True
                if content:
                    pieces += [f"\n{THINK_CLOSE}\n\n", content] if thinking else [content]
                    thinking = False
                for piece in pieces:
                    parts.append(piece)
                    yield piece
                if choice.finish_reason == "length":
                    finish = "length"
        return Completion(token_ids=[], text="".join(parts), finish_reason=finish)


def _reasoning(message: Any) -> str | None:
    """The reasoning a server's reasoning parser sent apart from the content (vLLM: `reasoning_content`, newer
    versions `reasoning`), or None."""
    for key in ("reasoning_content", "reasoning"):
        value = getattr(message, key, None)
        if value is None:
            value = (getattr(message, "model_extra", None) or {}).get(key)
        if isinstance(value, str) and value:
            return value
    return None
