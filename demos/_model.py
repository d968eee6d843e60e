"""The one place the model demos (chat, grounding, gui) reach a model: load it once, then `reply` (the whole text)
or `stream` (text deltas).

It goes through the generation layer (`mmrl.generation.load_backend`: a local checkpoint, a preset such as `tiny`, or
an OpenAI-compatible `http://host/v1` server), the same sampler training and evaluation use; `stream` yields the text
as the tokens are decoded.

A checkpoint is prompted as it was trained: the system prompt, prompt suffix and image size of its run's config.yaml
(`mmrl.generation.trained`), and the conversation built by training's own `build_messages`. The page may edit the
system prompt and suffix; a model without a run (a preset, a hub id, a URL) starts from `R1_SYSTEM`.

>>> model = DemoModel.load("tiny")  # doctest: +SKIP
>>> model.reply("How many dogs?", image, Sampling(max_new_tokens=32))  # doctest: +SKIP
'<think>...'
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mmrl.data.vision import resize_for_model
from mmrl.generation.trained import TrainedTemplate, template_messages, trained_template

R1_SYSTEM = "Think step by step inside <think> </think>, then give the final answer inside <answer> </answer>."


@dataclass(frozen=True)
class Sampling:
    """The controls a demo page offers. `temperature=0` is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    seed: int = 0


class DemoModel:
    """A loaded model for the demos; `load` caches one per (model, device) in the process."""

    def __init__(self, name: str, device: str = "auto"):
        from mmrl.generation import load_backend

        self.name = name
        self.device = device
        self.trained = _template_of(name)
        if self.trained.source is not None:
            self.system_prompt = self.trained.system_prompt or ""
            self.prompt_suffix = self.trained.prompt_suffix or ""
            self.template_origin = f"as trained: read from `{self.trained.source}`"
        else:  # nothing recorded: the R1 instruction, which base and R1-style models follow
            self.system_prompt, self.prompt_suffix = R1_SYSTEM, ""
            self.template_origin = self.trained.note or "no training run recorded for this model: mmrl's R1 prompt"
        # The template travels in each prompt (editable per request); the backend keeps the run's image settings only,
        # so a box in the model-input frame means what it meant in training.
        self.data_cfg = self.trained.data_cfg.model_copy(update={"system_prompt": None, "prompt_suffix": None})
        extra: dict[str, Any] = {}
        if not name.startswith(("http://", "https://")):
            extra["data_cfg"] = self.data_cfg
        self._backend = load_backend(name, device=device, dtype="auto", **extra)

    @functools.cached_property
    def interface(self) -> Any:
        """The model's frame and turn prefix (`mmrl.models.interface`): decided from its files, in one place."""
        from mmrl.models.interface import interface_of_backend

        return interface_of_backend(self._backend)

    @property
    def box_frame(self) -> str:
        """The frame this model writes boxes and points in (norm1000 for Qwen2-VL and Qwen3-VL, model-input pixels for
        Qwen2.5-VL). For a family with no published frame, or a model behind an HTTP endpoint (its type is not known
        here), model-input pixels, and `frame_note` says so on the page: a demo reading is never silently a guess."""
        return self.interface.pred_frame or "input_pixel"

    @property
    def frame_note(self) -> str:
        """"" when the frame is the model's own; else one line saying the frame was assumed."""
        if self.interface.pred_frame is not None:
            return ""
        why = "an HTTP endpoint" if self.name.startswith(("http://", "https://")) else self.interface.frame_source
        return f" · frame assumed: input pixels ({why}); pick the model's frame if it differs"

    @classmethod
    def load(cls, name: str, device: str = "auto") -> DemoModel:
        return _cached(name, device)

    def input_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of the model input the image becomes: the frame Qwen2.5-VL writes pixel boxes in."""
        return resize_for_model(image, self.data_cfg.min_pixels, self.data_cfg.max_pixels).size

    def prompt(self, question: str, image: Image.Image | None, system: str | None = None, suffix: str | None = None,
               ) -> Any:
        """The `Prompt` for a question: the model's template (or the given system prompt / suffix; "" = none)."""
        from mmrl.generation import Prompt

        system = self.system_prompt if system is None else system
        suffix = self.prompt_suffix if suffix is None else suffix
        return Prompt(template_messages(question, [image] if image is not None else [], system, suffix))

    def reply(self, question: str, image: Image.Image | None, sampling: Sampling, system: str | None = None,
              suffix: str | None = None) -> str:
        """One completion's text (the whole turn: with the block the template opened, if any)."""
        return "".join(self.stream(question, image, sampling, system, suffix))

    def stream(self, question: str, image: Image.Image | None, sampling: Sampling, system: str | None = None,
               suffix: str | None = None) -> Iterator[str]:
        """Text deltas of one completion, as the model writes them."""
        if self.interface.turn_prefix:  # the template opened the reasoning block: the reply is the whole turn
            yield self.interface.turn_prefix
        yield from self._backend.stream(self.prompt(question, image, system, suffix), _params(sampling))


@functools.lru_cache(maxsize=2)
def _cached(name: str, device: str) -> DemoModel:
    return DemoModel(name, device)


def _template_of(name: str) -> TrainedTemplate:
    if name.startswith(("http://", "https://")):  # the server holds the model; its run is not ours to read
        from mmrl.config.data import DataConfig

        return TrainedTemplate(None, None, DataConfig())
    return trained_template(name)


def _params(sampling: Sampling) -> Any:
    from mmrl.generation import SamplingParams

    return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                          max_new_tokens=sampling.max_new_tokens, seed=sampling.seed)  # fmt: skip


__all__ = ["DemoModel", "R1_SYSTEM", "Sampling"]
