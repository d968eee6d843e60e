"""Reinforcement learning: experience, advantages, losses, stages and the GRPO loop.

Pure parts (no model): `advantages.ADVANTAGES`, `losses.POLICY_LOSSES` (one `LossInputs` in, one `LossOutput` out),
`aggregations.AGGREGATIONS`, `mismatch.IS_CORRECTIONS`, `entropy.ENTROPY_CONTROLS`, `kl.kl_estimate`
(docs/algorithms.md lists each entry with its source).
Model parts: rollouts come from `mmrl.generation` (G samples per prompt, prompt encoded once), log-probs from
`mmrl.models.logprobs.completion_logprobs` (training forward with the prompt shared across its group),
`reference.make_reference` (KL reference).
Submodules are imported where used, so `import mmrl.rl` stays light.
"""
