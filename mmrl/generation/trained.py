"""The prompt template a checkpoint was trained with, read from its run directory.

A training run writes its resolved config as `<run>/config.yaml` next to `<run>/checkpoints/step-N/` (a pipeline step's
run is `<root>/<step>/`). A model asked a question without its training-time system prompt, prompt suffix or image
size sees a prompt it never saw: a model that scores 1.00 in evaluation can then answer nonsense. Whoever prompts a
checkpoint by hand (the demos) starts from `trained_template(model)`, and builds the conversation with
`template_messages`, which is `mmrl.data.templates.build_messages`: the code training and evaluation encode with.

>>> trained_template("tiny").source is None  # a preset has no run: no template recorded
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.config.data import DataConfig


@dataclass(frozen=True)
class TrainedTemplate:
    """What a prompt needs to look like the training prompts of a checkpoint.

    `data_cfg`: the run's `data` section (image resize bounds; its `system_prompt` / `prompt_suffix` are the ones below);
    `source`: the config.yaml it came from (None: the model has no run directory, so nothing is known); `note`: why a
    config.yaml next to the checkpoint could not be used (empty when it was, or when there is none).
    """

    system_prompt: str | None
    prompt_suffix: str | None
    data_cfg: DataConfig
    source: Path | None = None
    note: str = ""


def run_dir_of(model: str | Path) -> tuple[Path, int | None] | None:
    """(run directory, step) of a checkpoint `<run>/checkpoints/step-N`; None for anything else (a preset, a hub id,
    an exported model, which keep no record of their training prompts)."""
    path = Path(str(model).rstrip("/")).expanduser()
    if path.parent.name == "checkpoints" and path.name.startswith("step-"):
        step = path.name[len("step-"):]
        return path.parent.parent, int(step) if step.isdigit() else None
    return None


def _suffix_at(cfg: Any, step: int | None) -> str | None:
    """The prompt suffix of the stage that trained step `step` (planned stage lengths; the last stage for a step past
    the plan), else `data.prompt_suffix`."""
    stages = [s for s in (cfg.stages or []) if s.enabled]
    if not stages:
        return cfg.data.prompt_suffix
    chosen, start = stages[-1], 0
    if step is not None:
        for stage in stages:  # step N is N steps done: the last of them ran in the stage covering step N - 1
            if start <= max(step - 1, 0) < start + stage.steps:
                chosen = stage
                break
            start += stage.steps
    return chosen.prompt_suffix if chosen.prompt_suffix is not None else cfg.data.prompt_suffix


def trained_template(model: str | Path) -> TrainedTemplate:
    """The template `model` was trained with (see the module docstring); for a model without a run directory, an
    empty template with the default data settings (`source` None)."""
    found = run_dir_of(model)
    if found is None or not (found[0] / "config.yaml").is_file():
        return TrainedTemplate(None, None, DataConfig())
    run, step = found
    config = run / "config.yaml"
    from mmrl.config import load_config
    from mmrl.errors import UserError

    try:
        cfg = load_config(str(config))
    except (UserError, ValueError, OSError) as err:  # written by another mmrl version, or edited by hand
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return TrainedTemplate(None, None, DataConfig(), note=f"{config}: not readable as an mmrl config ({first})")
    suffix = _suffix_at(cfg, step)
    data = cfg.data.model_copy(update={"prompt_suffix": suffix})
    return TrainedTemplate(data.system_prompt, suffix, data, source=config)


def template_messages(question: str, images: list[Any], system_prompt: str | None, prompt_suffix: str | None,
                      ) -> list[dict[str, Any]]:
    """The chat messages training builds for `question` with `images` (PIL images or paths), each image part holding
    its image (the form `mmrl.generation.Prompt` takes). Empty strings count as no system prompt / no suffix.

    >>> [m["role"] for m in template_messages("What colour?", [], "Be brief.", " Answer in one word.")]
    ['system', 'user']
    """
    from mmrl.data.sample import Sample
    from mmrl.data.templates import build_messages

    sample = Sample(id="prompt", prompt=question, answer=None, images=list(images))
    messages = build_messages(sample, system_prompt or None, prompt_suffix or None)
    filling = iter(sample.images)
    for message in messages:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part.get("type") == "image":
                part["image"] = next(filling)
    return messages


__all__ = ["TrainedTemplate", "run_dir_of", "template_messages", "trained_template"]
