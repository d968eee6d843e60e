"""The policy update for one step's groups: mu passes over mini-batches, one backward per group (micro-batch).

Loss normalisation follows the contract in `mmrl/rl/losses.py`: every micro-batch uses the global active-token and
sequence counts of its mini-batch (summed over processes) and is scaled by world_size, so accumulated and averaged
gradients equal those of the whole global mini-batch computed at once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from mmrl.engine.distributed import all_reduce_sum
from mmrl.engine.run import TrainingRun
from mmrl.rl.experience import Group
from mmrl.rl.logprobs import completion_logprobs
from mmrl.rl.losses import aggregate, loss_mask, policy_loss
from mmrl.rl.stages import ResolvedStage


def _split(groups: list[Group], parts: int) -> list[list[Group]]:
    size = max(1, -(-len(groups) // parts))
    return [groups[i: i + size] for i in range(0, len(groups), size)] or [[]]


def _logprobs(model: Any, group: Group, temperature: float) -> torch.Tensor:
    return completion_logprobs(model, group.prompt, group.completion_ids, group.completion_mask, temperature=temperature)


def prepare_old_and_ref(run: TrainingRun, groups: list[Group], reference: Any) -> None:
    """Old log-probs only when the policy moves between passes (mu > 1 or several mini-batches); ref only if beta > 0."""
    algo, temperature = run.cfg.algorithm, run.cfg.rollout.temperature
    need_old = algo.num_iterations > 1 or algo.mini_batches > 1
    with torch.no_grad():
        for group in groups:
            if need_old:
                group.old_logp = _logprobs(run.model, group, temperature)
            if reference is not None:
                group.ref_logp = reference(group.prompt, group.completion_ids, group.completion_mask,
                                           temperature=temperature)


def policy_update(run: TrainingRun, groups: list[Group], stage: ResolvedStage, reference: Any) -> dict[str, float]:
    """Run the update; returns loss, grad norm and the loss-side metrics (means over micro-batches)."""
    cfg, world = run.cfg, run.dist.world_size
    algo = cfg.algorithm
    prepare_old_and_ref(run, groups, reference)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    losses, norms, stepped_all = [], [], True
    for _ in range(algo.num_iterations):
        for mini in _split(groups, algo.mini_batches):
            masks = [loss_mask(g.completion_mask, g.truncated, algo.mask_truncated) for g in mini]
            global_tokens = all_reduce_sum(sum(float(m.sum()) for m in masks), world)
            global_seqs = int(all_reduce_sum(sum(m.shape[0] for m in masks), world))
            local_loss = 0.0
            for group, mask in zip(mini, masks):
                # A group whose advantages are all 0 contributes exactly 0 without a KL term (whatever the ratio, the
                # clipped surrogate of A = 0 is 0): skip its forward. Its tokens still count in the normalisers.
                if algo.beta == 0 and bool((group.advantages == 0).all()):
                    continue
                logp = _logprobs(run.model, group, cfg.rollout.temperature)
                per_token, metrics = policy_loss(
                    logp, group.old_logp, group.advantages, mask, eps_low=algo.eps_low, eps_high=algo.eps_high,
                    dual_clip_c=algo.dual_clip_c, ratio_clamp=algo.ratio_clamp, ref_logp=group.ref_logp,
                    beta=algo.beta, kl_estimator=algo.kl_estimator, kl_clamp=algo.kl_clamp)
                loss = aggregate(algo.loss_aggregation, per_token, mask, max_completion_length=stage.max_completion_length,
                                 global_active_tokens=global_tokens, global_num_sequences=global_seqs)
                (loss * world).backward()
                local_loss += float(loss.detach())
                for key, value in metrics.items():
                    sums[key] += float(value)
                    counts[key] += 1
            step_loss = all_reduce_sum(local_loss, world)
            grad_norm, stepped = run.optimizer_step(step_loss)
            losses.append(step_loss)
            norms.append(grad_norm)
            stepped_all = stepped_all and stepped
    out = {f"loss/{k}": sums[k] / counts[k] for k in sums}
    out.update({"loss": sum(losses) / len(losses), "grad_norm": sum(norms) / len(norms),
                "skipped_step": 0.0 if stepped_all else 1.0})
    return out
