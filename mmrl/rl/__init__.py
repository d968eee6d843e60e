"""Reinforcement learning: experience, advantages, losses, stages and the GRPO loop.

Pure parts (no model): `advantages.ADVANTAGES`, `losses.policy_loss`, `losses.AGGREGATIONS`, `kl.kl_estimate`.
Model parts: rollouts come from `mmrl.generation` (G samples per prompt, prompt encoded once), log-probs from
`mmrl.models.logprobs.completion_logprobs` (training forward with the prompt shared across its group),
`reference.make_reference` (KL reference).
Submodules are imported where used, so `import mmrl.rl` stays light.
"""
