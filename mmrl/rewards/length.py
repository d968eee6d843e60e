"""Length shaping: `overlong` (DAPO soft overlong penalty), `cosine_length`, `repetition_penalty`.

Lengths come from the `completion_length` column (tokens; the trainer fills it). Without it the item is unscorable.

>>> overlong_reward(["a"] * 4, completion_length=[10, 12, 14, 20], max_length=16, buffer=4)
[0.0, 0.0, -0.5, -1.0]
"""

from __future__ import annotations

import math

from mmrl.errors import UserError
from mmrl.rewards._columns import col, row_meta
from mmrl.rewards.accuracy import verify_answer
from mmrl.rewards.extraction import extract_answer
from mmrl.rewards.registry import register_reward


def _lengths(completion_length, n: int) -> list:
    if completion_length is None:
        raise UserError("this length reward needs the 'completion_length' column (tokens per completion)")
    return col(completion_length, n)


@register_reward("overlong")
def overlong_reward(completions, completion_length=None, max_length=None, buffer=None, factor=1.0,
                    max_completion_length=None, **_) -> list:  # fmt: skip
    """DAPO: 0 up to `max_length - buffer` tokens, then linear down to -1 at `max_length`, -1 beyond; times `factor`.

    `max_length` defaults to the `max_completion_length` column, which the trainer fills with the stage's generation
    limit (a fixed default would never fire when rollouts stop at 256 tokens). `buffer` defaults to 20% of it (DAPO:
    4096 of 20480). A negative `factor` would reward overlong answers and is rejected.

    >>> overlong_reward(["a"] * 5, completion_length=[5, 6, 8, 10, 12], max_length=10, buffer=4)
    [0.0, 0.0, -0.5, -1.0, -1.0]
    >>> overlong_reward(["a"] * 3, completion_length=[200, 225, 260], max_completion_length=[250] * 3)
    [0.0, -0.5, -1.0]
    """
    if factor < 0:
        raise UserError(f"overlong: factor must be >= 0 (got {factor}); a negative factor would reward overlong answers")
    n = len(completions)
    limits = [max_length] * n if max_length is not None else col(max_completion_length, n)
    out: list[float | None] = []
    for length, limit in zip(_lengths(completion_length, n), limits, strict=True):
        if limit is None:
            raise UserError("overlong needs max_length (kwargs) or the 'max_completion_length' column (the trainer "
                            "fills it from the stage; for `mmrl reward score` add it to each line or pass --kwargs)")
        pad = buffer if buffer is not None else max(1, round(0.2 * limit))
        if not 0 < pad <= limit:
            raise UserError(f"overlong: need 0 < buffer <= max_length (got buffer={pad}, max_length={limit})")
        if length is None:
            out.append(None)
        elif length <= limit - pad:
            out.append(0.0)
        elif length <= limit:
            out.append(factor * ((limit - pad) - length) / pad + 0.0)
        else:
            out.append(-factor + 0.0)
    return out


@register_reward("cosine_length", heavy=True, reads_answer=True)
def cosine_length_reward(completions, answer=None, task=None, choices=None, completion_length=None, max_length=1000,
                         min_value_correct=0.5, max_value_correct=1.0, min_value_wrong=-1.0, max_value_wrong=-0.5,
                         allow_boxed=True, **columns) -> list:  # fmt: skip
    """Cosine-scaled correctness (Yeo et al., "Demystifying Long CoT"): a correct answer earns more when short
    (1.0 at length 0 -> 0.5 at max_length); a wrong one is penalised less when long (-1.0 -> -0.5).

    >>> cosine_length_reward(["<answer>2</answer>", "<answer>3</answer>"], answer=["2", "2"], task=["count"] * 2,
    ...                      completion_length=[0, 1000], max_length=1000)
    [1.0, -0.5]
    """
    n = len(completions)
    lengths, answers = _lengths(completion_length, n), col(answer, n)
    tasks, choice_lists = col(task, n, "text"), col(choices, n)
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        correct = verify_answer(extract_answer(completion, allow_boxed=allow_boxed), answers[i], tasks[i],
                                choice_lists[i], **row_meta(columns, i, n))  # fmt: skip
        if correct is None or lengths[i] is None:
            out.append(None)
            continue
        lo, hi = (min_value_correct, max_value_correct) if correct else (max_value_wrong, min_value_wrong)
        progress = min(float(lengths[i]) / max_length, 1.0)
        out.append(lo + 0.5 * (hi - lo) * (1.0 + math.cos(progress * math.pi)))
    return out


@register_reward("repetition_penalty")
def repetition_penalty_reward(completions, ngram_size=3, max_penalty=-1.0, **_) -> list:
    """N-gram repetition penalty: max_penalty * (1 - distinct n-grams / all n-grams) over whitespace words.

    >>> repetition_penalty_reward(["a b c d", "a b a b a b"], ngram_size=2)
    [0.0, -0.6]
    """
    if max_penalty > 0:
        raise UserError(f"repetition_penalty: max_penalty must be <= 0 (got {max_penalty})")
    out = []
    for completion in completions:
        words = completion.lower().split()
        grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append(0.0 if not grams else round(max_penalty * (1 - len(set(grams)) / len(grams)), 10) + 0.0)
    return out
