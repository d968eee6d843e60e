"""What every generation backend takes and returns: `SamplingParams`, `Prompt`, `Completion`, `GenerationBackend`.

Rollouts (n = G), greedy evaluation (temperature 0), the data builders, the demos and `mmrl serve` all speak these
types, so a backend (the in-process HF sampler, an OpenAI-compatible server, vLLM) is swapped without touching them.

>>> params = SamplingParams(n=4, temperature=0.8, max_new_tokens=64, seed=0)
>>> prompt = Prompt.from_question("What colour is the square?", images=["square.png"], system="Answer briefly.")
>>> [m["role"] for m in prompt.messages], [p["type"] for p in prompt.messages[1]["content"]]
(['system', 'user'], ['image', 'text'])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature` 0 is greedy (then `top_p`/`top_k` are ignored); `top_k` 0 = no top-k filter.

    `stop` strings end a completion where they first appear (the string itself is not part of the text);
    `stop_token_ids` end it like the model's own end-of-turn tokens (which always stop generation). `seed` makes a
    call repeatable; None leaves it to the backend's own randomness. `logprobs`: also return the log-prob of each
    sampled token under the tempered, unfiltered distribution (what the training forward recomputes).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        # Lists from JSON or YAML become tuples, so params stay hashable and immutable.
        object.__setattr__(self, "stop", tuple([self.stop] if isinstance(self.stop, str) else self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in self.stop_token_ids))
        problems = []
        if self.n < 1:
            problems.append(f"n must be >= 1 (got {self.n})")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (got {self.top_k})")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(f"min_new_tokens must be in [0, max_new_tokens] (got {self.min_new_tokens})")
        if any(not s for s in self.stop):
            problems.append("stop strings must be non-empty")
        if problems:
            raise ValueError("SamplingParams: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Prompt:
    """One conversation to continue, as OpenAI-style chat messages.

    `content` is a string or a list of parts: `{"type": "text", "text": ...}` or `{"type": "image", "image": x}` where x
    is a PIL image or a path. The assistant turn is opened by the backend (the chat template's generation prompt).
    """

    messages: list[dict[str, Any]]

    @classmethod
    def from_question(cls, question: str, images: Sequence[Any] = (), system: str | None = None) -> Prompt:
        """A single user turn: the images first, then the question (the Qwen-VL convention)."""
        content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
        content.append({"type": "text", "text": question})
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        return cls(messages + [{"role": "user", "content": content}])

    def images(self) -> list[Any]:
        """The images of every image part, in order of appearance."""
        return [part["image"] for m in self.messages if isinstance(m.get("content"), list)
                for part in m["content"] if part.get("type") == "image"]


FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """One generated continuation.

    token_ids: the generated tokens, the end-of-turn token that stopped it included (empty where a remote backend
    does not report ids); text: decoded, end-of-turn/padding tokens removed but tags such as `<think>` kept, cut
    before a stop string; finish_reason: "stop" (end-of-turn, stop id or stop string) or "length" (hit
    max_new_tokens); logprobs: one per token of `token_ids` when asked for and available.
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class GenerationBackend(Protocol):
    """Anything that continues prompts. `generate` returns, per prompt, `params.n` completions in order."""

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]: ...

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[str]:
        """Text deltas of one completion (params.n must be 1); their concatenation is the completion's text."""
        ...
