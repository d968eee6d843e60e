"""Reinforcement learning: rollouts, log-probs, advantages, losses, stages and the GRPO loop.

Pure parts (no model): `advantages.ADVANTAGES`, `losses.policy_loss`, `losses.AGGREGATIONS`, `kl.kl_estimate`.
Model parts: `rollout.make_backend` (G samples per prompt, prompt encoded once), `logprobs.completion_logprobs`
(training forward with the prompt shared across its group), `reference.make_reference` (KL reference).
Submodules are imported where used, so `import mmrl.rl` stays light.
"""
