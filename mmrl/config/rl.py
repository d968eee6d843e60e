"""`rollout:`, `algorithm:` and `rewards:` — how completions are sampled, scored and learned from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mmrl.config.base import Section


class RolloutConfig(Section):
    backend: str = Field(
        "hf", description="Rollout backend: 'hf' (in-process transformers sampler) | 'vllm' (colocated vLLM engine; "
        "the `vllm` extra, CUDA only). Checked against the rollout backend registry when the config loads.")
    group_size: int = Field(8, ge=2, description="Completions per prompt (G); advantages compare within a group.")
    max_completion_length: int = Field(256, ge=1, description="Maximum new tokens per completion.")
    min_new_tokens: int = Field(0, ge=0, description="Forbid EOS before this many new tokens (benchmarks force lengths).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0: off).")
    share_prompt: bool = Field(
        True, description="Encode each prompt (image and text) once per group and share its KV cache across G samples."
    )
    max_batch_rows: int = Field(
        64, ge=1, description="backend hf (shared prefix): most completion rows (prompts x G) decoded in one batch; "
        "prompts beyond it decode in further batches. Bounds the decode's KV cache; results do not depend on it.")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="backend vllm: share of the GPU's memory the colocated engine may take while "
        "awake (weights + KV cache; it sleeps during the update). 0.3 is TRL's colocate default.")
    vllm_max_model_len: int | None = Field(
        None, ge=1, description="backend vllm: the engine's context length (prompt + completion); null: the model's.")
    max_staleness: int = Field(
        0, ge=0, description="Asynchronous training (docs/async.md): 0 runs rollout then update on the same weights "
        "(synchronous). k >= 1 moves the rollouts into a worker process with its own copy of the policy that samples "
        "up to k steps ahead: the groups of step t come from the weights of step t - k, and algorithm.is_correction "
        "corrects the gap with the worker's log-probs. Backend hf, one process, no until_metric stages.")
    worker_threads: int | None = Field(
        None, ge=1, description="max_staleness >= 1: torch threads of the rollout worker process (null: torch's "
        "default). On a small CPU give worker and trainer one share each (e.g. 1 and trainer threads 1 on 2 cores).")
    worker_timeout_s: float = Field(
        600.0, gt=0, description="max_staleness >= 1: seconds the trainer waits for the worker's next batch before it "
        "stops the worker and the run with one line (a hung worker), counted from when the trainer asks; the first "
        "batch (the worker's start: imports, model copy, first rollout) has at least 600 s.")


class OnlineFilterConfig(Section):
    enabled: bool = Field(False, description="Drop groups whose mean accuracy is outside [low, high] and refill.")
    metric: str = Field("accuracy", description="Reward component whose group mean is filtered on.")
    low: float = Field(0.0, description="Keep groups with mean > low (exclusive: 0 drops all-wrong groups).")
    high: float = Field(1.0, description="Keep groups with mean < high (exclusive: 1 drops all-right groups).")
    max_tries: int = Field(3, ge=1, description="Rollout rounds per step to refill dropped groups.")


class AlgorithmConfig(Section):
    advantage: str = Field(
        "grpo", description="Advantage estimator: grpo | dr_grpo | rloo | reinforce_pp | gdpo (GDPO: each reward "
        "normalised within its group, summed with the rewards' weights, then normalised over the batch; for recipes "
        "that combine format, accuracy, IoU or GUI rewards).")
    scale_rewards: bool | None = Field(
        None,
        description="Divide group-centred rewards by the group std. null: the estimator's own convention (grpo: yes; "
        "rloo and dr_grpo: no; reinforce_pp whitens over the global batch instead and ignores it).",
    )
    std_eps: float = Field(1e-4, gt=0, description="Added to the std before dividing.")
    policy_loss: str = Field(
        "ppo",
        description="ppo (token-level importance ratio, clipped per token) | gspo (GSPO: sequence-level ratio "
        "exp(mean token log-ratio), clipped per sequence; the paper uses eps_low=3e-4, eps_high=4e-4) | cispo "
        "(MiniMax-M1: the ratio clipped to [1 - eps_low, 1 + eps_high] as a stop-gradient weight on log-prob; the "
        "paper sets no lower bound: eps_low=1) | sapo (soft adaptive: sigmoid gate with sapo_tau_pos / "
        "sapo_tau_neg instead of the clip) | gmpo (geometric mean of the token ratios, each clipped to "
        "[e^-eps_low, e^eps_high]; the paper uses 0.4 / 0.4). See docs/algorithms.md.",
    )
    loss_aggregation: str = Field(
        "grpo",
        description="grpo (token mean per sequence, then mean) | bnpo (token mean of each micro-batch, then the mean "
        "over all micro-batches of the step, as TRL) | dr_grpo (token sum / (B * max_completion_length)) | "
        "dapo (token mean over all active tokens of the global batch).",
    )
    eps_low: float = Field(0.2, ge=0, description="PPO clip: ratio >= 1 - eps_low (cispo: the weight's floor "
                           "1 - eps_low; gmpo: the log-ratio's floor -eps_low).")
    eps_high: float = Field(0.2, ge=0, description="PPO clip: ratio <= 1 + eps_high (clip-higher: e.g. 0.28; cispo: "
                            "the weight's cap 1 + eps_high; gmpo: the log-ratio's cap eps_high).")
    sapo_tau_pos: float = Field(1.0, gt=0, description="policy_loss sapo: gate temperature for A > 0 (paper: 1.0).")
    sapo_tau_neg: float = Field(1.05, gt=0, description="policy_loss sapo: gate temperature for A <= 0 (paper: 1.05; "
                                "larger: off-policy tokens of negative advantages are damped faster).")
    dual_clip_c: float | None = Field(None, gt=1, description="Dual clip constant c for negative advantages (e.g. 3).")
    beta: float = Field(0.0, ge=0, description="KL coefficient (0: no reference model is computed).")
    kl_penalty: Literal["loss", "reward"] = Field(
        "loss",
        description="Where the KL to the reference goes: 'loss' (beta * estimator per token, added to the policy "
        "loss, as GRPO) or 'reward' (beta * sum over the completion's tokens subtracted from its reward before "
        "the advantages, as PPO and verl's use_kl_in_reward).",
    )
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] | None = Field(
        None,
        description="Per-token KL estimator (Schulman's k1/k2/k3; verl's low_var_kl = k3 clamped to [-10, 10]). "
        "null: k3 in the loss, k1 in the reward. k1 in the loss is rejected: its expected gradient is 0.",
    )
    kl_clamp: float | None = Field(10.0, gt=0, description="Clamp the per-token KL estimate to [-c, c].")
    ratio_clamp: float | None = Field(None, gt=0, description="Clamp the log importance ratio to [-c, c] before exp.")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes (mu) over each batch of rollouts.")
    mini_batches: int = Field(
        1, ge=1, description="Optimizer steps per pass: the step's groups are split into this many mini-batches "
        "(trainer.prompts_per_step must be a multiple of processes x mini_batches).")
    mask_truncated: bool = Field(False, description="Exclude completions that hit max_completion_length from the loss.")
    tis_cap: float | None = Field(
        2.0, gt=0,
        description="Truncated importance sampling (TIS) against the rollout/trainer log-prob mismatch: when the "
        "rollout backend returns its sampler's log-probs (vLLM; the HF shared-prefix sampler), every token's policy-"
        "gradient loss is multiplied by min(exp(trainer old log-prob - sampler log-prob), tis_cap). 2.0 is TRL's "
        "vllm_importance_sampling_cap default for its token-level TIS. null: off (the mismatch is still logged). The "
        "upper bound of every is_correction mode.")
    is_correction: str = Field(
        "token_truncate",
        description="How the rollout/trainer mismatch weight is formed from r = trainer / sampler probability "
        "(needs tis_cap): token_truncate (min(r_t, tis_cap): TIS) | token_mask (r_t kept inside [tis_floor, "
        "tis_cap], else 0: MIS) | sequence_truncate / sequence_mask (the same with one ratio per completion, "
        "exp(sum of token log-ratios)) | icepop (r_t kept inside [1/tis_cap, tis_cap], else 0). Diagnostics "
        "(rollout/chi2_token, chi2_seq, is_ess, logprob_kl) are logged whatever the mode.")
    tis_floor: float | None = Field(
        None, gt=0, description="Lower bound of the is_correction weight: *_truncate raise ratios below it to it, "
        "*_mask zero them. null: none. icepop ignores it (its floor is 1/tis_cap), so it is refused there.")
    off_policy_mask_threshold: float | None = Field(
        None, ge=0, description="DeepSeek-V3.2's off-policy sequence mask: a completion with negative advantage whose "
        "mean token log(pi_sampler / pi_theta) exceeds this delta gets no policy gradient (the sampler's log-probs "
        "when the backend returns them, else the old policy's). null: off.")
    entropy_control: str = Field(
        "fixed", description="Entropy bonus coefficient c (loss = policy loss - c * mean token entropy): fixed "
        "(c = entropy_coef) | adaptive (Skywork-OR1: c rises by entropy_coef_delta while the step's entropy is at or "
        "below entropy_target and falls otherwise, within [entropy_coef_min, entropy_coef_max]; applied only while "
        "the entropy is at or below the target). See docs/algorithms.md.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient (fixed), or its starting value "
                                "(adaptive; Skywork-OR1 starts at 0). 0 with fixed: no bonus.")
    entropy_target: float = Field(0.2, ge=0, description="entropy_control adaptive: the target mean token entropy "
                                  "(nats; Skywork-OR1: 0.2).")
    entropy_coef_delta: float = Field(0.005, ge=0, description="entropy_control adaptive: change of the coefficient "
                                      "per step (Skywork-OR1: 0.005).")
    entropy_coef_min: float = Field(0.0, ge=0, description="entropy_control adaptive: lowest coefficient.")
    entropy_coef_max: float = Field(1.0, ge=0, description="entropy_control adaptive: highest coefficient.")
    top_entropy_quantile: float = Field(
        1.0, gt=0, le=1, description="Train on the highest-entropy tokens only: the policy gradient keeps the tokens "
        "whose entropy is in the top fraction q of the step's active tokens (0.2: the '80/20' paper's forking "
        "tokens). 1: every token.")
    online_filter: OnlineFilterConfig = Field(default_factory=OnlineFilterConfig, description="Online group filter.")

    @property
    def resolved_kl_estimator(self) -> str:
        """The estimator in use: `kl_estimator`, or k3 in the loss / k1 in the reward when it is null.

        Resolved on read, not written back: the loader dumps the defaults, so a derived value would stick."""
        if self.kl_estimator is not None:
            return self.kl_estimator
        return "k3" if self.kl_penalty == "loss" else "k1"

    @model_validator(mode="after")
    def _scale_where_it_applies(self) -> AlgorithmConfig:
        # dr_grpo never divides by the std (that is the paper's point) and reinforce_pp whitens instead: a `true` there
        # would be silently ignored.
        if self.scale_rewards and self.advantage in ("dr_grpo", "reinforce_pp"):
            raise ValueError(
                f"algorithm.scale_rewards: {self.advantage} never divides by the group std (dr_grpo by design, "
                "reinforce_pp whitens over the batch instead); remove scale_rewards=true or use advantage=grpo/rloo")
        return self

    @model_validator(mode="after")
    def _entropy_bounds(self) -> AlgorithmConfig:
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError(f"algorithm.entropy_coef_min ({self.entropy_coef_min}) must not exceed "
                             f"algorithm.entropy_coef_max ({self.entropy_coef_max})")
        return self

    @model_validator(mode="after")
    def _gdpo_reads_the_rewards_apart(self) -> AlgorithmConfig:
        # gdpo normalises each reward's own scores: a KL subtracted from the total reward would be dropped
        if self.advantage == "gdpo" and self.beta > 0 and self.kl_penalty == "reward":
            raise ValueError("algorithm.kl_penalty: advantage gdpo normalises each reward apart and cannot take the "
                             "KL in the reward; use kl_penalty=loss (or another advantage)")
        return self

    @model_validator(mode="after")
    def _loss_settings_that_apply(self) -> AlgorithmConfig:
        # a setting the chosen loss never reads would be silently ignored
        if self.dual_clip_c is not None and self.policy_loss in ("cispo", "sapo", "gmpo"):
            raise ValueError(f"algorithm.dual_clip_c: policy_loss {self.policy_loss} has no clipped surrogate to "
                             "bound; remove dual_clip_c or use policy_loss=ppo/gspo")
        if self.is_correction == "icepop" and self.tis_floor is not None:
            raise ValueError("algorithm.tis_floor: icepop's floor is 1/tis_cap; remove tis_floor or use "
                             "is_correction=token_mask")
        if self.is_correction == "icepop" and self.tis_cap is not None and self.tis_cap <= 1:
            raise ValueError(f"algorithm.tis_cap: icepop keeps ratios inside [1/tis_cap, tis_cap], empty for "
                             f"tis_cap={self.tis_cap}; use a cap above 1 (e.g. 5)")
        if self.tis_floor is not None and self.tis_cap is not None and self.tis_floor >= self.tis_cap:
            raise ValueError(f"algorithm.tis_floor ({self.tis_floor}) must be below algorithm.tis_cap ({self.tis_cap})")
        if self.tis_floor is not None and self.tis_cap is None:
            raise ValueError("algorithm.tis_floor: the correction is off (tis_cap: null); set tis_cap or remove "
                             "tis_floor")
        if self.tis_cap is None and self.is_correction != self._default("is_correction"):
            raise ValueError(f"algorithm.is_correction: {self.is_correction} needs a bound, and the correction is off "
                             "(tis_cap: null); set tis_cap (e.g. 3) or remove is_correction")
        # Off their defaults, these would be silently ignored by the chosen loss / entropy control. Values are compared
        # with the defaults, not the fields set: a run's saved config holds every field.
        ignored = {
            "eps_low": self.policy_loss == "sapo", "eps_high": self.policy_loss == "sapo",
            "ratio_clamp": self.policy_loss == "gmpo",
            "sapo_tau_pos": self.policy_loss != "sapo", "sapo_tau_neg": self.policy_loss != "sapo",
        }
        for name, by_loss in ignored.items():
            if by_loss and getattr(self, name) != self._default(name):
                raise ValueError(f"algorithm.{name}: policy_loss {self.policy_loss} does not read it; remove "
                                 f"{name} (or choose a policy_loss that does: see docs/algorithms.md)")
        if self.entropy_control == "fixed":
            for name in ("entropy_target", "entropy_coef_delta", "entropy_coef_min", "entropy_coef_max"):
                if getattr(self, name) != self._default(name):
                    raise ValueError(f"algorithm.{name}: only entropy_control=adaptive reads it; set "
                                     f"algorithm.entropy_control=adaptive or remove {name}")
        elif self.entropy_control == "adaptive" and not (
                self.entropy_coef_min <= self.entropy_coef <= self.entropy_coef_max):
            raise ValueError(f"algorithm.entropy_coef: the adaptive coefficient starts at {self.entropy_coef}, outside "
                             f"[entropy_coef_min, entropy_coef_max] = [{self.entropy_coef_min}, "
                             f"{self.entropy_coef_max}]; start inside the range")
        return self

    @classmethod
    def _default(cls, name: str) -> Any:
        return cls.model_fields[name].default

    @model_validator(mode="after")
    def _no_k1_in_loss(self) -> AlgorithmConfig:
        if self.kl_penalty == "loss" and self.kl_estimator == "k1":
            raise ValueError(
                "algorithm.kl_estimator: k1 as a loss term has zero expected gradient (E[grad log pi] = 0), so beta "
                "would only add noise; use kl_estimator=k2, k3 or low_var_kl, or algorithm.kl_penalty=reward for k1")
        return self


class RewardSpec(Section):
    name: str = Field(..., description="Registered reward name, or 'path/to/file.py:function'.")
    weight: float = Field(1.0, allow_inf_nan=False, description="Weight in the total reward.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the reward.")
    timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit per completion; a completion over it scores 0 "
                             "(None only when the item's gold cannot be read within it).")
