"""The reference policy for the KL penalty: the adapter switched off for LoRA, a frozen copy otherwise, none at beta=0.

>>> make_reference(model, beta=0.0) is None  # doctest: +SKIP
True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from mmrl.models.logprobs import DEFAULT_CHUNK, completion_logprobs
from mmrl.models.placement import compute_autocast, compute_dtype
from mmrl.models.training_forward import ImageFeatures, reuse_image_features
from mmrl.models.vision_tower import vision_module

LogprobFn = Callable[..., torch.Tensor]


def is_peft_model(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


@torch.no_grad()
def reference_logprobs(
    model: Any,
    prompt: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    logprob_fn: LogprobFn = completion_logprobs,
) -> torch.Tensor:
    """Log-probs [G, T] under the reference: for a peft model, `model` with its adapter disabled (no second copy of
    the weights); for any other model, `model` itself (pass the frozen copy). No gradient."""
    kwargs = dict(temperature=temperature, chunk_size=chunk_size)
    if is_peft_model(model):
        with model.disable_adapter():
            return logprob_fn(model, prompt, completion_ids, completion_mask, **kwargs)
    return logprob_fn(model, prompt, completion_ids, completion_mask, **kwargs)


class ReferencePolicy:
    """Callable `(prompt, completion_ids, completion_mask, temperature=1.0) -> Tensor[G, T]` of reference log-probs.

    Holds either the policy itself (peft: adapter disabled at call time) or a frozen deep copy taken at construction.
    """

    def __init__(self, model: Any) -> None:
        if is_peft_model(model):
            self.model, self.shares_weights = model, True
            # The adapter-free model runs the policy's very tower: a frozen one (no adapter in it) gives the
            # policy's image features (`reuse_image_features` checks it is frozen).
            self._policy_tower, self._same_tower = None, True
        else:
            self.model = copy.deepcopy(model).eval()
            self.model.requires_grad_(False)
            _hold_in_compute_dtype(self.model, compute_dtype(model))
            self.shares_weights = False
            # The copy's tower computes the policy's features bit for bit only when it holds the very same weights:
            # not under bf16 (`_hold_in_compute_dtype` recasts them), nor after a resume that loaded another tower
            # into the policy. Compared once, at the first reuse (after any resume; a frozen tower never moves).
            self._policy_tower, self._same_tower = vision_module(model), None

    def __call__(self, prompt: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                 temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK,
                 image_features: ImageFeatures | None = None) -> torch.Tensor:
        """`image_features`: the rollout's features of this prompt's images (frozen policy tower), reused when the
        reference's tower computes exactly the same."""
        if image_features is not None and self._same_tower is None:
            self._same_tower = _same_weights(vision_module(self.model), self._policy_tower)
        with reuse_image_features(self.model, image_features if self._same_tower else None):
            return reference_logprobs(self.model, prompt, completion_ids, completion_mask,
                                      temperature=temperature, chunk_size=chunk_size)


def _same_weights(mine: torch.nn.Module | None, theirs: torch.nn.Module | None) -> bool:
    """True when both towers hold equal parameters and buffers (same dtypes, same values)."""
    if mine is None or theirs is None:
        return False
    ours, other = mine.state_dict(), theirs.state_dict()
    if ours.keys() != other.keys():
        return False
    try:
        return all(ours[k].dtype == other[k].dtype and ours[k].shape == other[k].shape
                   and bool(torch.equal(ours[k], other[k].to(ours[k].device))) for k in ours)
    except (RuntimeError, TypeError):  # sharded (DTensor) weights: do not reuse
        return False


def _hold_in_compute_dtype(model: Any, compute: torch.dtype) -> None:
    """Never stepped, so the copy's matmul weights are held in the compute dtype (bf16 under model.dtype=bf16):
    exactly what autocast casts the policy's fp32 weights to. Norms, embeddings and the LM head (often tied to the
    embeddings; autocast casts it as it casts the policy's) keep the policy's dtype, and the same autocast runs: at step 0 the
    reference's log-probs equal the policy's bit for bit (a bf16 copy of everything differs by bf16 noise, a KL
    floor), for a little more than half the memory of an fp32 copy."""
    if compute == torch.float32:
        return
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            module.to(compute)
    if not isinstance(compute_autocast(model), torch.autocast):
        # The model's first parameter was a matmul weight, so its `dtype` now reads `compute` and no autocast would
        # run: hold the whole copy in the compute dtype instead (close to the policy, not bit-equal).
        model.to(compute)


def make_reference(model: Any, beta: float) -> ReferencePolicy | None:
    """None when beta == 0 (the reference forward is skipped entirely), else a ReferencePolicy for `model`."""
    if beta == 0:
        return None
    return ReferencePolicy(model)
