"""TRL's `GRPOConfig` names, translated to mmrl's config tree where the meaning is the same, refused with the mmrl
name to use where it is not.

A TRL user writes `learning_rate=1e-5, num_generations=4, per_device_train_batch_size=8, bf16=True,
report_to="none"`; mmrl keeps one name per setting (`optimizer.lr`, `rollout.group_size`, ...). `translate` turns
the TRL names into mmrl's dotted keys (values converted where the two spell them differently: `bf16=True` is
`model.dtype=bf16`, `report_to="none"` is `trainer.report_to=[]`) and collects every refusal, so a user sees all of
them at once instead of one per attempt. The Python API (`mmrl.GRPOConfig`) and the YAML/command-line loader (a
TRL name inside the section mmrl keeps it in: `optimizer.learning_rate`, `rollout.num_generations`) share it.

Step counts: TRL counts optimizer steps, mmrl counts rollout steps (each makes `num_iterations` optimizer steps,
see `trainer.max_steps`); the two agree only at num_iterations=1, so step counts with num_iterations > 1 are refused.

>>> translate({"learning_rate": 1e-5, "bf16": True, "report_to": "none"}, group_size=8).overrides
{'optimizer.lr': 1e-05, 'model.dtype': 'bf16', 'trainer.report_to': []}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# TRL name -> the mmrl key with the same meaning (values passed as they are, unless CONVERT says otherwise).
SAME: dict[str, str] = {
    "output_dir": "trainer.output_dir",
    "learning_rate": "optimizer.lr",
    "num_generations": "rollout.group_size",
    "max_completion_length": "rollout.max_completion_length",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
    "beta": "algorithm.beta",
    "epsilon": "algorithm.eps_low",
    "epsilon_high": "algorithm.eps_high",
    "num_iterations": "algorithm.num_iterations",
    "loss_type": "algorithm.loss_aggregation",
    "scale_rewards": "algorithm.scale_rewards",
    "mask_truncated_completions": "algorithm.mask_truncated",
    "lr_scheduler_type": "optimizer.schedule",
    "warmup_steps": "optimizer.warmup_steps",
    "weight_decay": "optimizer.weight_decay",
    "max_grad_norm": "optimizer.max_grad_norm",
    "adam_epsilon": "optimizer.eps",
    "max_steps": "trainer.max_steps",
    "num_train_epochs": "trainer.num_epochs",
    "seed": "trainer.seed",
    "save_steps": "trainer.save_steps",
    "save_total_limit": "trainer.keep_last",
    "eval_steps": "trainer.eval_steps",
    "report_to": "trainer.report_to",
    "disable_tqdm": "trainer.progress",
    "bf16": "model.dtype",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "trust_remote_code": "model.trust_remote_code",
    "shuffle_dataset": "data.shuffle",
    "use_vllm": "rollout.backend",
    "vllm_gpu_memory_utilization": "rollout.vllm_gpu_memory_utilization",
    "vllm_max_model_length": "rollout.vllm_max_model_len",
    "sapo_temperature_pos": "algorithm.sapo_tau_pos",
    "sapo_temperature_neg": "algorithm.sapo_tau_neg",
    "vllm_importance_sampling_mode": "algorithm.is_correction",
    "vllm_importance_sampling_clip_min": "algorithm.tis_floor",
    "off_policy_mask_threshold": "algorithm.off_policy_mask_threshold",
    "top_entropy_quantile": "algorithm.top_entropy_quantile",
    "entropy_coef": "algorithm.entropy_coef",
    "entropy_target": "algorithm.entropy_target",
    "entropy_coef_delta": "algorithm.entropy_coef_delta",
    "entropy_coef_min": "algorithm.entropy_coef_min",
    "entropy_coef_max": "algorithm.entropy_coef_max",
}

# TRL names whose value enters a computed mmrl setting (the batch) or only how often TRL prints.
BATCH = ("per_device_train_batch_size", "gradient_accumulation_steps")
ADAM_BETAS = ("adam_beta1", "adam_beta2")
NO_EFFECT = {"logging_steps": "mmrl logs every step (metrics.jsonl, trackers, progress)"}

# TRL names with no same-meaning mmrl setting: what to use instead (checked against TRL's own field list in tests).
REFUSED: dict[str, str] = {
    "steps_per_generation": "trainer.prompts_per_step (prompts per rollout) and algorithm.mini_batches (optimizer "
                            "steps per rollout)",
    "generation_batch_size": "trainer.prompts_per_step (prompts per rollout, all processes; each is sampled "
                             "num_generations times)",
    "per_device_eval_batch_size": "eval.batch_size (items generated at once)",
    "eval_strategy": "trainer.eval_steps (evaluates data.eval every N steps; 0: never)",
    "save_strategy": "trainer.save_steps (0: only at the end)",
    "logging_strategy": "nothing: mmrl logs every step",
    "torch_compile": "model.compile (compiles the decoder layers for the policy update only)",
    "optim": "optimizer.name (adamw or sgd)",
    "lr_scheduler_kwargs": "optimizer.min_lr_ratio (the floor of the decaying schedules)",
    "delta": "algorithm.dual_clip_c (the dual-clip constant for negative advantages)",
    "importance_sampling_level": "algorithm.policy_loss (ppo: token level, gspo: sequence level)",
    "vllm_importance_sampling_cap": "algorithm.tis_cap",
    "vllm_importance_sampling_clip_max": "algorithm.tis_cap",
    "vllm_importance_sampling_correction": "algorithm.tis_cap (null: no correction; the mismatch is still logged)",
    "vllm_mode": "rollout.backend=vllm (colocated vLLM; mmrl has no server mode)",
    "reward_weights": "GRPOTrainer(reward_weights=...) or a weight per entry of `rewards`",
    "resume_from_checkpoint": "trainer.resume (a checkpoint path or 'auto')",
    "min_p": "rollout.top_p / rollout.top_k (mmrl's sampler has no min_p)",
    "repetition_penalty": "nothing: mmrl's sampler has no repetition penalty (it would change the sampled "
                          "distribution the loss assumes)",
    "log_completions": "trainer.sample_steps (completions with their rewards in samples/step-N.jsonl)",
    "run_name": "name (the run's name)",
    "use_cpu": "trainer.device=cpu",
    "data_seed": "trainer.seed (one seed for data order and sampling)",
    "use_adaptive_entropy": "algorithm.entropy_control=adaptive",
    "multi_objective_aggregation": "algorithm.advantage=gdpo (TRL's normalize_then_sum)",
}

HOME_SECTIONS = ("model", "data", "rollout", "algorithm", "optimizer", "trainer")


def home_section(name: str) -> str | None:
    """The section a TRL name may be written under in a YAML or override (`optimizer.learning_rate`)."""
    if name in SAME:
        return SAME[name].split(".")[0]
    if name in BATCH or name in NO_EFFECT:
        return "trainer"
    if name in ADAM_BETAS:
        return "optimizer"
    return "model" if name == "fp16" else None


def aliases(section: str) -> dict[str, str]:
    """The TRL names accepted inside `section`, each with the mmrl key it sets (what a near-miss should hear of)."""
    out = {}
    for name in (*SAME, *BATCH, *ADAM_BETAS):
        if home_section(name) == section:
            out[name] = SAME.get(name) or ("optimizer.betas" if name in ADAM_BETAS else "trainer.prompts_per_step")
    return out


def hint(name: str) -> str | None:
    """What to write instead of TRL name `name` (None: not a TRL name mmrl knows)."""
    if name in SAME:
        return f"TRL's '{name}' is '{SAME[name]}' in mmrl"
    if name in BATCH:
        return f"TRL's '{name}' sizes the batch: use trainer.prompts_per_step (prompts per step, all processes)"
    if name in ADAM_BETAS:
        return f"TRL's '{name}' is an entry of 'optimizer.betas'"
    if name == "fp16":
        return "TRL's 'fp16' has no mmrl equivalent (fp16 needs loss scaling): use 'model.dtype' (bf16 or fp32)"
    if name in NO_EFFECT:
        return f"TRL's '{name}' has no effect in mmrl: {NO_EFFECT[name]}"
    if name in REFUSED:
        return f"TRL's '{name}' has no same-meaning setting in mmrl; use {REFUSED[name]}"
    return None


@dataclass
class Translation:
    """mmrl overrides (dotted key -> value), one-line refusals, notes for names that change nothing, and where each
    override came from: `origin[key]` is the TRL name; a key in `derived` is only TRL's default for it (eps_high
    from epsilon), so a value the user gives that key explicitly wins over it."""

    overrides: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)
    derived: set[str] = field(default_factory=set)

    def without(self, explicit: set[str]) -> dict[str, Any]:
        """The overrides less the derived ones the user set explicitly."""
        return {k: v for k, v in self.overrides.items() if not (k in self.derived and k in explicit)}


def _bf16(value: Any) -> str:
    return {True: "bf16", False: "fp32", None: "auto"}[value]


def _report_to(value: Any) -> list[str]:
    names = [value] if isinstance(value, str) else list(value or [])
    if names in (["none"], []):
        return []  # metrics.jsonl is written whatever the sinks
    if "all" in names:
        raise ValueError("mmrl has no 'all': list the sinks (jsonl, tensorboard, wandb, trackio)")
    return names


def _scale_rewards(value: Any) -> bool:
    if value in (True, "group"):
        return True
    if value in (False, "none"):
        return False
    raise ValueError("mmrl divides by the group std or not at all (true/'group' or false/'none'); for a batch-wide "
                     "std use algorithm.advantage=reinforce_pp")


def _schedule(value: Any) -> Any:
    # HF's 'constant' ignores warm-up; mmrl's 'constant' warms up first, as HF's 'constant_with_warmup'
    return "constant" if value == "constant_with_warmup" else value


# TRL's loss_type names a loss as well as an aggregation for some values: those are two mmrl settings.
_LOSS_TYPES = {"cispo": "algorithm.policy_loss=cispo with algorithm.loss_aggregation=dapo (TRL caps the weight at "
                        "epsilon_high itself: mmrl's eps_high is that minus 1)",
               "sapo": "algorithm.policy_loss=sapo with algorithm.loss_aggregation=grpo"}


def _loss_type(value: Any) -> Any:
    if value in _LOSS_TYPES:
        raise ValueError(f"TRL's '{value}' is {_LOSS_TYPES[value]}")
    return value


CONVERT: dict[str, Callable[[Any], Any]] = {
    "loss_type": _loss_type,
    "bf16": _bf16,
    "report_to": _report_to,
    "scale_rewards": _scale_rewards,
    "lr_scheduler_type": _schedule,
    "disable_tqdm": lambda v: not v,
    "use_vllm": lambda v: "vllm" if v else "hf",
    "top_k": lambda v: 0 if v is None else v,  # TRL's None and 0 both mean no top-k
    "max_grad_norm": lambda v: None if v == 0 else v,  # TRL: 0 disables clipping; mmrl: null
}
STEP_COUNTS = ("max_steps", "save_steps", "eval_steps")


def _steps_problem(settings: Mapping[str, Any], iterations: int) -> str | None:
    counted = [k for k in STEP_COUNTS if k in settings and settings[k] not in (None, -1)]
    if iterations > 1 and counted:
        return (f"{counted[0]}: with num_iterations={iterations} TRL counts optimizer steps and mmrl counts rollout "
                f"steps ({iterations} optimizer steps each); give trainer.{counted[0]} in rollout steps")
    return None


def translate(settings: Mapping[str, Any], group_size: int, world_size: int | None = None,
              iterations: int = 1) -> Translation:
    """mmrl overrides for TRL-named `settings` (see the module docstring); names that are not TRL's are left out
    (the caller reports them). `group_size` is G when `num_generations` is not among the settings."""
    out = Translation()
    for name, value in settings.items():
        if name == "eval_strategy" and value in ("no", "steps"):
            out.notes.append(f"eval_strategy={value!r} has no effect: trainer.eval_steps decides (0: never)")
        elif name in REFUSED:
            out.problems.append(f"{name}: {hint(name)}")
        elif name in NO_EFFECT:
            out.notes.append(f"{name}={value!r} has no effect: {NO_EFFECT[name]}")
        elif name == "fp16" or name in SAME:
            _same(name, value, settings, out)
    problem = _steps_problem(settings, int(settings.get("num_iterations", iterations) or 1))
    if problem:
        out.problems.append(problem)
    if any(k in settings for k in ADAM_BETAS):
        out.overrides["optimizer.betas"] = [settings.get("adam_beta1", 0.9), settings.get("adam_beta2", 0.999)]
        out.origin["optimizer.betas"] = next(k for k in ADAM_BETAS if k in settings)
    _batch(settings, int(settings.get("num_generations", group_size)), world_size, out)
    return out


def _same(name: str, value: Any, settings: Mapping[str, Any], out: Translation) -> None:
    if name == "fp16":
        if value:
            out.problems.append("fp16=True: mmrl does not offer fp16 (it needs loss scaling); use model.dtype=bf16 "
                                "(TRL's bf16=True) or fp32")
        return  # fp16=False asks for nothing mmrl would do
    if value is None and name not in CONVERT or name == "max_steps" and value == -1:
        return  # TRL's "not set": mmrl's default (for max_steps: the epochs) decides
    if name == "num_train_epochs" and settings.get("max_steps") not in (None, -1):
        return  # as in TRL, a positive max_steps overrides the epochs
    if name == "warmup_steps" and isinstance(value, float) and 0 < value < 1:
        out.overrides["optimizer.warmup_ratio"] = value  # TRL: a float below 1 is a ratio of the run
        out.origin["optimizer.warmup_ratio"] = name
        return
    try:
        converted = CONVERT[name](value) if name in CONVERT else value
    except (ValueError, KeyError, TypeError) as err:
        message = str(err) if isinstance(err, ValueError) else f"got {value!r}"
        out.problems.append(f"{name}={value!r}: {message} ({SAME[name]})")
        return
    out.overrides[SAME[name]] = converted
    out.origin[SAME[name]] = name
    if name == "epsilon" and settings.get("epsilon_high") is None:
        out.overrides["algorithm.eps_high"] = converted  # TRL: epsilon_high defaults to epsilon (symmetric clip)
        out.origin["algorithm.eps_high"] = name
        out.derived.add("algorithm.eps_high")


def _batch(settings: Mapping[str, Any], group_size: int, world_size: int | None, out: Translation) -> None:
    """TRL's batch is counted in completions per device per micro-step; mmrl's in prompts per step, all processes:
    prompts_per_step = per_device_train_batch_size x processes x gradient_accumulation_steps / num_generations
    (TRL requires that division to be exact too)."""
    if not any(k in settings for k in BATCH):
        return
    if "per_device_train_batch_size" not in settings:
        out.problems.append("gradient_accumulation_steps: in mmrl it only sizes the batch together with "
                            "per_device_train_batch_size; give both, or set trainer.prompts_per_step")
        return
    processes = world_size or int(os.environ.get("WORLD_SIZE", "1") or 1)
    per_device = settings["per_device_train_batch_size"]
    accumulation = settings.get("gradient_accumulation_steps", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (per_device, accumulation)):
        out.problems.append(f"per_device_train_batch_size/gradient_accumulation_steps must be integers >= 1 (got "
                            f"{per_device!r}, {accumulation!r})")
        return
    completions = per_device * processes * accumulation
    if completions % group_size:
        out.problems.append(
            f"per_device_train_batch_size={per_device} x {processes} process(es) x gradient_accumulation_steps="
            f"{accumulation} = {completions} completions is not a multiple of num_generations={group_size}; "
            "make it one, or set trainer.prompts_per_step (prompts per step, all processes)")
        return
    out.overrides["trainer.prompts_per_step"] = completions // group_size
    out.origin["trainer.prompts_per_step"] = "per_device_train_batch_size"
