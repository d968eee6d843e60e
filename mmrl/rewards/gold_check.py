"""Golds the rewards cannot score: each reward is called on the gold itself, written as the completion a model would
give (`<think>...</think><answer>GOLD</answer>`); a None means the reward can never score that sample, so training on
it teaches nothing. The rewards are the run's or, without a run config, the reward the sample's task implies (the
`accuracy` reward's tasks, `gui_action` for gui).

`gold_check(rewards)` is the check `mmrl.data.checks.check_samples` / `check_for_training` take as `golds`: the data
room runs it per sample without importing the rewards.

>>> from mmrl.data.checks import check_samples
>>> from mmrl.data.sample import Sample
>>> samples = [Sample(id="a", prompt="How many?", answer="blue", task="count", images=[])]
>>> print(check_samples(samples, open_images=False, golds=gold_check(None)).errors[0].message)  # doctest: +ELLIPSIS
reward 'accuracy' cannot score the gold "blue" (task 'count'): the item would always be unscorable; ...
>>> check_samples(samples, open_images=False).errors  # without `golds` the gold is not scored
[]
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from mmrl.data.checks import AddFinding, GoldCheck, fmt_box, is_number
from mmrl.data.sample import Sample
from mmrl.rewards.registry import get_reward
from mmrl.rewards.safe import call_with_timeout

# Built-in reward a task implies when no run config is given (the accuracy reward's tasks score with `accuracy`).
GUI_REWARD = "gui_action"


def gold_as_completion(answer: Any, tags: Sequence[str] | None = ("<answer>", "</answer>")) -> str:
    """The gold written as a model would answer it (inside the reward's answer `tags`), so a reward can be asked to
    score its own gold."""
    if isinstance(answer, str):
        text = answer
    elif isinstance(answer, (list, tuple)) and answer and all(is_number(v) for v in answer):
        text = fmt_box(answer)
    elif isinstance(answer, (list, tuple)) and answer and all(isinstance(v, str) for v in answer):
        text = answer[0]  # several acceptable answers: any one of them must score
    else:
        text = json.dumps(answer, default=str)
    if not tags or len(tags) != 2:
        return text  # a reward reading the whole completion gets the bare answer
    return f"<think>checking the gold answer</think>{tags[0]}{text}{tags[1]}"


def rewards_for_task(task: str) -> list[dict[str, Any]]:
    """The reward a sample's task implies when no run config is given ([] when no built-in one scores it)."""
    from mmrl.rewards.accuracy import ACCURACY_TASKS

    if task in ACCURACY_TASKS:
        return [{"name": "accuracy"}]
    if task == "gui":
        return [{"name": GUI_REWARD}]
    return []


def _spec_fields(spec: Any) -> tuple[str, dict[str, Any], float, float]:
    if isinstance(spec, str):
        return spec, {}, 1.0, 5.0
    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
    return get("name"), dict(get("kwargs", None) or {}), float(get("weight", 1.0)), float(get("timeout_s", 5.0))


@functools.lru_cache(maxsize=1)
def _warm_verifier() -> None:
    """Import math-verify and build its parser once, outside any time limit: on a loaded machine the first parse
    alone can take seconds, which would turn a good gold into a spurious timeout warning."""
    from math_verify import parse

    parse("$1$")


def _gold_findings(sample: Sample, add: AddFinding, rewards: Sequence[Any] | None) -> None:
    _warm_verifier()

    specs = rewards_for_task(sample.task) if rewards is None else list(rewards)
    if rewards is None and not specs:
        add(
            "warning",
            "gold",
            f"no built-in reward scores task '{sample.task}'; check the gold against your run's "
            "rewards with --config RUN.yaml",
        )
        return
    columns = {k: [v] for k, v in sample.reward_columns().items()}
    for spec in specs:
        name, kwargs, weight, timeout_s = _spec_fields(spec)
        if weight == 0:
            continue  # zero-weight components are reported by the trainer but never block an item
        completion = gold_as_completion(sample.answer, kwargs.get("tags", ("<answer>", "</answer>")))
        outcome = call_with_timeout(get_reward(name), timeout_s, [completion], **columns, **kwargs)
        if outcome.status == "timeout":
            add(
                "warning",
                "gold",
                f"reward '{name}' took over {timeout_s:g}s on the gold itself; every item of this sample may time out",
            )
        elif outcome.status != "ok":
            add(
                "error",
                "gold",
                f"reward '{name}' fails on this sample's gold ({outcome.message.splitlines()[0]})"
                if outcome.message
                else f"reward '{name}' fails on this sample's gold",
            )
        elif not isinstance(outcome.value, (list, tuple)) or len(outcome.value) != 1:
            add("error", "gold", f"reward '{name}' returned {outcome.value!r:.60} for one completion")
        elif outcome.value[0] is None:
            add(
                "error",
                "gold",
                f"reward '{name}' cannot score the gold {json.dumps(sample.answer, default=str)[:80]} "
                f"(task '{sample.task}'): the item would always be unscorable; fix the gold or the task",
            )


def gold_check(rewards: Sequence[Any] | None) -> GoldCheck:
    """The gold check for `rewards` (RewardSpec, dicts or names); None infers each sample's reward from its task."""
    return functools.partial(_gold_findings, rewards=None if rewards is None else list(rewards))


__all__ = ["GUI_REWARD", "gold_as_completion", "gold_check", "rewards_for_task"]
