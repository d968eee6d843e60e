"""Score generations with the same code as the rewards: answer extraction + verification (the `accuracy` reward's
path, grounding included) for most tasks; for GUI actions the `gui_action` reward's parts, where a generation is correct
when both the action type and its target (click point inside the gold box, or the argument) are right.

Scoring is separate from generation so that it can be checked on fixed strings:

>>> from mmrl.data.sample import Sample
>>> s = Sample(id="q1", prompt="2+2?", answer="4", task="math")
>>> [r.scores for r in score_generations([s], [["<answer>4</answer>", "<answer>5</answer>"]])]
[[1.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmrl.data.sample import Sample
from mmrl.errors import UserError

# Tasks a user routes to a reward function instead (none by default: grounding goes through verify_answer, IoU > 0.5,
# as the accuracy reward; gui through the gui_action reward's parts).
DEFAULT_REWARD_FOR_TASK: dict[str, str] = {}
# Sample.meta keys that name an item's category in the per-category breakdown (first one present wins).
CATEGORY_KEYS = ("category", "subject", "question_type", "skill", "synthetic_task")


@dataclass
class ItemScore:
    """The scores of one item's k generations; `None` scores mean the item could not be scored (unscorable gold)."""

    id: str
    task: str
    category: str | None
    scores: list[float | None]
    predictions: list[str | None] = field(default_factory=list)
    reason: str | None = None  # why the item is unscorable

    @property
    def unscorable(self) -> bool:
        return any(s is None for s in self.scores)

    def n_correct(self, threshold: float = 0.5) -> int:
        return sum(1 for s in self.scores if s is not None and s >= threshold)


def category_of(sample: Sample, keys: Sequence[str] = CATEGORY_KEYS) -> str | None:
    for key in keys:
        value = sample.meta.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def _meta_kwargs(sample: Sample, model_frame: str | None = None) -> dict[str, Any]:
    """The keyword columns `verify_answer` gets from the accuracy reward (id, sizes, box frame, the model's frame,
    meta...)."""
    columns = {k: v for k, v in sample.reward_columns().items() if k not in {"answer", "task", "choices"}}
    return {**columns, "model_frame": model_frame}


def _score_text(sample: Sample, generations: Sequence[str], tags, allow_boxed: bool, category_keys,
                model_frame: str | None = None) -> ItemScore:
    from mmrl.rewards.accuracy import verify_answer
    from mmrl.rewards.extraction import extract_answer

    scores: list[float | None] = []
    predictions: list[str | None] = []
    for text in generations:
        pred = extract_answer(text, tags=tags, allow_boxed=allow_boxed)
        predictions.append(pred)
        # A missing answer scores 0 unless the gold itself is unusable (then None): verify_answer decides both.
        score = verify_answer(pred, sample.answer, sample.task, choices=sample.choices,
                              **_meta_kwargs(sample, model_frame))
        scores.append(None if score is None else float(score))
    reason = "the gold answer cannot be verified" if any(s is None for s in scores) else None
    return ItemScore(sample.id, sample.task, category_of(sample, category_keys), scores, predictions, reason)


def _score_gui(sample: Sample, generations: Sequence[str], category_keys, model_frame: str | None = None) -> ItemScore:
    from mmrl.rewards.extraction import extract_answer
    from mmrl.rewards.gui import score_action

    meta = _meta_kwargs(sample, model_frame)
    # The format part of gui_action is not correctness: an item is right when the action and its target are.
    parts = [score_action(text, sample.answer, meta) for text in generations]
    scores: list[float | None] = [p["action"] * p["coord"] for p in parts]
    predictions = [extract_answer(text) for text in generations]
    return ItemScore(sample.id, sample.task, category_of(sample, category_keys), scores, predictions)


def _score_with_reward(sample: Sample, generations: Sequence[str], reward_name: str, category_keys,
                       model_frame: str | None = None) -> ItemScore:
    from mmrl.rewards.registry import get_reward

    reward = get_reward(reward_name)
    row = {**sample.reward_columns(), "model_frame": model_frame}
    columns = {key: [value] * len(generations) for key, value in row.items()}
    raw = reward(list(generations), **columns)
    if len(raw) != len(generations):
        raise UserError(f"reward '{reward_name}' returned {len(raw)} scores for {len(generations)} completions "
                        f"(sample {sample.id}); a reward must return one score per completion")
    scores = [None if s is None else float(s) for s in raw]
    reason = f"reward '{reward_name}' could not score it" if any(s is None for s in scores) else None
    return ItemScore(sample.id, sample.task, category_of(sample, category_keys), scores, [None] * len(scores), reason)


def score_generations(
    samples: Sequence[Sample],
    generations: Sequence[Sequence[str]],
    reward_for_task: Mapping[str, str] | None = None,
    tags: tuple[str, str] | None = ("<answer>", "</answer>"),
    allow_boxed: bool = True,
    category_keys: Sequence[str] = CATEGORY_KEYS,
    model_frame: str | None = None,
) -> list[ItemScore]:
    """One `ItemScore` per sample: `generations[i]` are the k completions of `samples[i]` (the model's whole turns).
    `model_frame`: the frame the model answers boxes/points in (`mmrl.models.interface`; the rewards' default).

    Tasks in `reward_for_task` (e.g. `{"mytask": "my_rewards.py:score"}`) are scored by that reward function; `gui` by
    the `gui_action` reward's action and target parts; the rest (grounding included) by `extract_answer` +
    `verify_answer`, exactly as the `accuracy` reward does.
    """
    if len(samples) != len(generations):
        raise ValueError(f"score_generations: {len(samples)} samples but {len(generations)} generation lists")
    routes = DEFAULT_REWARD_FOR_TASK if reward_for_task is None else reward_for_task
    results = []
    for sample, texts in zip(samples, generations):
        if sample.task in routes:
            results.append(_score_with_reward(sample, texts, routes[sample.task], category_keys, model_frame))
        elif sample.task == "gui":
            results.append(_score_gui(sample, texts, category_keys, model_frame))
        else:
            results.append(_score_text(sample, texts, tags, allow_boxed, category_keys, model_frame))
    return results
