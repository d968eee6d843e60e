"""The one way anything in mmrl generates: rollouts, evaluation, data builders, demos and `mmrl serve`.

>>> from mmrl.generation import Prompt, SamplingParams, load_backend
>>> backend = load_backend("tiny")  # doctest: +SKIP
>>> backend.generate([Prompt.from_question("What is 2 + 3?")], SamplingParams(temperature=0, max_new_tokens=16))  # doctest: +SKIP
[[Completion(token_ids=[...], text='...', finish_reason='length', logprobs=None)]]
"""

from mmrl.generation.load import load_backend
from mmrl.generation.types import Completion, GenerationBackend, Prompt, SamplingParams

__all__ = ["Completion", "GenerationBackend", "Prompt", "SamplingParams", "load_backend"]
