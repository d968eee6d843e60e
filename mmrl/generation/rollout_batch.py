"""What a rollout returns to training: the sampled completions of P prompts x n samples as padded tensors.

Every in-process backend (`mmrl.generation.hf`, `mmrl.generation.vllm_backend`) builds it; `mmrl.rl.experience` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RolloutBatch:
    """P prompts x n samples in prompt-major order (row i belongs to prompt i // n).

    completion_ids [P*n, T] right padded with the pad id; completion_mask [P*n, T] is 1 up to and including the token
    that finished the row; truncated [P*n] bool: it hit max_new_tokens; texts: decoded completions (special tags kept,
    EOS/pad stripped, cut at a stop string); logprobs [P*n, T] float32: log-probs of the sampled tokens under the
    sampling policy (logits / temperature, before top-k/top-p filtering), or None when the backend does not provide
    them. Tensors live on the model's device. Image/video placeholder tokens are never sampled.
    """

    prompt_index: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor
    texts: list[str]
    group_size: int
    logprobs: torch.Tensor | None = None
    counters: dict[str, Any] = field(default_factory=dict)


__all__ = ["RolloutBatch"]
