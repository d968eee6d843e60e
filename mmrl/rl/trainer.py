"""GRPO and its variants: `mmrl train CONFIG`. The loop reads top to bottom, one named timer per phase.

    stage   = schedule.stage_at(step)                 # curriculum / PTST stage: data, G, max length, rewards
    groups  = collect_step(...)                       # rollout (prompt shared per group) + rewards
    batch   = training_batch(...)                     # advantages (+ the old/reference log-probs), frozen
    metrics = policy_update(...)                      # mu passes x mini-batches, guarded optimizer steps
    log · maybe samples · maybe eval · maybe checkpoint
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from mmrl.config import MMRLConfig
from mmrl.data.checks import check_for_training
from mmrl.data.dataset import load_datasets
from mmrl.data.prompt_order import PromptSampler
from mmrl.errors import UserError
from mmrl.generation.backends import check_backend, make_backend
from mmrl.generation.multiturn import check_episode_model
from mmrl.models.interface import ModelInterface, eval_coordinate_tasks, interface_of, reads_coordinates
from mmrl.optim import build_scheduler, reset_optimizer_state
from mmrl.parallel.distributed import all_gather_objects
from mmrl.rewards.composite import RewardComposite
from mmrl.rewards.gold_check import gold_check
from mmrl.rl.async_rollout import AsyncRollout
from mmrl.rl.entropy import entropy_control
from mmrl.rl.episodes import collect_episodes, episode_metrics, episode_sample_rows, evaluate_episodes
from mmrl.rl.experience import Group, RolloutBackend, collect_step
from mmrl.rl.group_stats import local_stats
from mmrl.rl.reference import ReferencePolicy, make_reference
from mmrl.rl.rollout_worker import spec_key
from mmrl.rl.stages import ResolvedStage, StageSchedule
from mmrl.rl.training_batch import TrainingBatch, training_batch
from mmrl.rl.update import policy_update
from mmrl.runs.directory import discard_fresh_run, release_run_dir, used_run_files
from mmrl.runs.logger import PhaseTimer
from mmrl.runs.training_run import TrainingRun, prepare_run, start_run

_key = spec_key  # a stage's data or rewards specs -> the key their sampler, dataset and composite are cached by


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


class GRPOLoop:
    """Holds the run's parts; `train()` runs to `trainer.max_steps` (resuming if asked) and returns the run dir."""

    def __init__(self, cfg: MMRLConfig) -> None:
        if not cfg.data.train and not any(s.data for s in cfg.stages):
            raise UserError("data.train: no training data configured; set data.train=path/to/data.jsonl")
        self.cfg = cfg
        check_backend(cfg.rollout.backend)  # a missing extra (vllm) is one line before anything loads or is written
        if cfg.model.compile and cfg.model.gradient_checkpointing:  # dynamo gives up on the checkpointed layer
            raise UserError("model.compile=true does nothing with model.gradient_checkpointing=true (torch.compile "
                            "cannot trace the checkpointed decoder layers, which would run eager); set one of them "
                            "to false")
        prepare_run(cfg)  # the run directory is checked and locked before anything reads data or writes there
        fresh = not used_run_files(Path(cfg.trainer.output_dir))  # nothing of an earlier run is there
        self.schedule = StageSchedule(cfg.stages, cfg)
        self._datasets: dict[str, list] = {}
        self.run_dir = Path(cfg.trainer.output_dir)
        # Data problems surface before the model loads: every stage's dataset is read and checked first.
        try:
            for start, _name in self.schedule.boundaries():
                stage = self.schedule.stage_at(start)
                # multi-turn: the environment scores the episodes, not the reward list
                self._load(stage.data or tuple(cfg.data.train), None if cfg.env.name else stage.rewards)
            if cfg.trainer.num_epochs is not None:
                self._steps_from_epochs()
        except BaseException:
            release_run_dir(self.run_dir)  # nothing was written: leave no claimed, empty directory behind
            raise
        self.run: TrainingRun = start_run(cfg, total_steps=self.schedule.total_steps)
        if self.run.engine.owns_optimizer and any(s.reset_optimizer for s in self.schedule.stages[1:]):
            self.run.close()  # DeepSpeed owns the optimizer's partitions; a reset of them is not checked to be exact
            raise UserError("stages[].reset_optimizer is not supported under DeepSpeed; use DDP or FSDP2, or set "
                            "reset_optimizer: false")
        try:
            self.interface = self._interface()
            if cfg.env.name:  # multi-turn: a family the episodes cannot run on is refused before a step
                check_episode_model(self.run.model)
        except BaseException:
            self.run.close()
            if fresh:  # refused before a step (a model with no frame): rerunning with model.pred_frame must just work
                discard_fresh_run(self.run_dir)
            raise
        # The LR schedule reads the run length at every step: an until_metric that ends a stage early shortens it.
        # A stage with reset_optimizer restarts the schedule: each part between resets has its own warm-up and decay.
        self.run.scheduler = build_scheduler(self.run.optimizer, cfg.optimizer, lambda: self.schedule.total_steps,
                                             segment=self.schedule.lr_segment)
        self.backend: RolloutBackend = make_backend(self.run.model, self.run.processor, cfg.rollout.backend,
                                                    share_prompt=cfg.rollout.share_prompt, data_cfg=cfg.data,
                                                    rollout_cfg=cfg.rollout)
        # FSDP2 shards the frozen copy like the policy; DDP and ZeRO-2 keep it whole on every process
        self.reference: ReferencePolicy | None = self.run.engine.shard_reference(
            make_reference(self.run.model, cfg.algorithm.beta))
        # Sampling draws on the model's device, so the generator lives there (CUDA rejects a CPU generator).
        self.generator = torch.Generator(device=self.run.dist.device)
        self.entropy = entropy_control(cfg.algorithm)  # the bonus coefficient, adapted step to step when adaptive
        self.generator.manual_seed(cfg.trainer.seed * 1000 + self.run.dist.rank)
        self._samplers: dict[str, PromptSampler] = {}
        self._composites: dict[str, RewardComposite] = {}
        self.eval_samples = self._load(tuple(cfg.data.eval)) if cfg.data.eval and cfg.trainer.eval_steps else []
        # rollout.max_staleness >= 1: a worker process rolls out (docs/async.md); None: the synchronous loop
        self.max_staleness: int | None = cfg.rollout.max_staleness or None
        if self.max_staleness and not self.run.engine.whole_model_per_process:  # the config refuses these first
            self.run.close()
            raise UserError(f"rollout.max_staleness: asynchronous rollouts run on one process or under DDP, not "
                            f"{self.run.engine.name}; use the DDP preset or set rollout.max_staleness=0")
        self.worker: AsyncRollout | None = None

    def _steps_from_epochs(self) -> None:
        """`trainer.num_epochs`: the run takes as many steps as the epochs need (prompts_per_step prompts each), as
        TRL's num_train_epochs; the saved config records the steps it came to."""
        cfg = self.cfg
        if cfg.stages:
            raise UserError("trainer.num_epochs: with stages each stage gives its own steps; remove num_epochs")
        prompts = len(self._load(tuple(cfg.data.train)))
        cfg.trainer.max_steps = max(1, math.ceil(cfg.trainer.num_epochs * prompts / cfg.trainer.prompts_per_step))
        self.schedule = StageSchedule(cfg.stages, cfg)

    # -- per-stage parts, built once and cached by their spec --------------------------------------------------
    def _load(self, specs: tuple, rewards: tuple | None = None) -> list:
        key = _key(specs)
        if key not in self._datasets:
            samples = load_datasets(list(specs), self.cfg.data)
            if not samples:
                raise UserError(f"data: the dataset(s) {[s.path for s in specs]} contain no samples")
            self._datasets[key] = check_for_training(samples, self.cfg.data, gold_check(rewards))  # writes nothing
        return self._datasets[key]

    def _interface(self) -> ModelInterface:
        """The model's frame and turn prefix (`mmrl.models.interface`), recorded in the run directory; a run that
        would read boxes or points in a frame nobody knows stops here, naming the reward."""
        interface = interface_of(self.run.model, self.run.processor, self.cfg.model.pred_frame,
                                 self.cfg.data.chat_template_kwargs, self.cfg.data.system_prompt)
        if interface.pred_frame is None:
            for start, _name in self.schedule.boundaries():
                stage = self.schedule.stage_at(start)
                tasks = {s.task for s in self._load(stage.data or tuple(self.cfg.data.train))}
                reader = reads_coordinates(stage.rewards, tasks)
                if reader is not None:
                    interface.require_frame(reader)
            if self.cfg.data.eval and self.cfg.trainer.eval_steps:  # else the run stops at its first eval
                tasks = eval_coordinate_tasks({s.task for s in self._load(tuple(self.cfg.data.eval))},
                                              self.cfg.eval.reward_for_task)
                if tasks:
                    interface.require_frame(f"eval (data.eval) on {'/'.join(tasks)} items")
        if self.run.dist.is_main:
            interface.save(self.run.run_dir)
        if interface.think != "none" or interface.pred_frame not in (None, "input_pixel"):
            self.run.logger.event(interface.describe())  # what differs from reading completions as they are
        return interface

    def _sampler(self, specs: tuple) -> PromptSampler:
        key = _key(specs)
        if key not in self._samplers:
            self._samplers[key] = PromptSampler(len(self._load(specs)), self.cfg.trainer.seed, self.cfg.data.shuffle)
        return self._samplers[key]

    def _composite(self, rewards: tuple) -> RewardComposite:
        key = _key(rewards)
        if key not in self._composites:
            self._composites[key] = RewardComposite(list(rewards))
        return self._composites[key]

    def _data_cfg(self, stage: ResolvedStage):
        if stage.prompt_suffix is None:
            return self.cfg.data
        return self.cfg.data.model_copy(update={"prompt_suffix": stage.prompt_suffix})

    # -- state -------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        # Samplers restored from a checkpoint but not used since (their stage comes later) are saved again as they
        # were, or a second resume would restart them at position 0.
        samplers = dict(getattr(self, "_saved_samplers", {}))
        samplers.update({k: s.state_dict() for k, s in self._samplers.items()})
        return {"schedule": self.schedule.state_dict(), "generator": self.generator.get_state(), "samplers": samplers,
                "entropy": self.entropy.state_dict()}

    def _restore(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        self._saved_samplers = state.get("samplers", {})
        if "entropy" in state:  # checkpoints from before the entropy controls have none
            self.entropy.load_state_dict(state["entropy"])

    def _sampler_for(self, specs: tuple) -> PromptSampler:
        sampler = self._sampler(specs)
        saved = getattr(self, "_saved_samplers", {}).pop(_key(specs), None)
        if saved is not None:
            sampler.load_state_dict(saved)
        return sampler

    # -- the loop ----------------------------------------------------------------------------------------------
    def train(self) -> Path:
        run, cfg = self.run, self.cfg
        state = run.load_resume_state()
        if state is not None:
            self._restore(state)
        step = run.start_step
        stage = None
        try:
            if self.max_staleness is not None:
                self.worker = AsyncRollout.launch(
                    cfg, run.model, run.processor, self.interface, self._datasets, self.generator,
                    dict(getattr(self, "_saved_samplers", {})), step, self.schedule.total_steps, self.max_staleness,
                    rank=run.dist.rank, world_size=run.dist.world_size)  # DDP: each rank its own worker
            # Stages may end early (until_metric), so the schedule, not a fixed count, says when training is done.
            while not self.schedule.finished(step):
                timer = PhaseTimer()
                started = time.perf_counter()
                new_stage = self.schedule.stage_at(step)
                if stage is None or new_stage.index != stage.index:
                    run.logger.event(f"step {step}: stage {new_stage.index} '{new_stage.name}' "
                                     f"(G={new_stage.group_size}, max_len={new_stage.max_completion_length})")
                stage = new_stage
                if self.schedule.resets_at(step):  # here, not at advance: a resume at this step resets it as well
                    reset_optimizer_state(run.optimizer)
                    run.logger.event(f"step {step}: stage '{stage.name}' starts with a fresh optimizer and schedule")
                specs = stage.data or tuple(cfg.data.train)
                with timer("rollout"):
                    if self.worker is not None:  # rollout.max_staleness >= 1: docs/async.md
                        groups, info = self._take_async(step)
                    else:
                        run.model.eval()
                        collect = collect_episodes if cfg.env.name else collect_step  # multi-turn: docs/multiturn.md
                        groups, info = collect(
                            cfg, stage, self._load(specs), self._sampler_for(specs), run.dist.rank,
                            run.dist.world_size, processor=run.processor, backend=self.backend,
                            composite=self._composite(stage.rewards), generator=self.generator,
                            data_cfg=self._data_cfg(stage), interface=self.interface)
                        run.model.train()
                with timer("update"):
                    # rollout -> rewards (above) -> advantages -> update, one order wherever the KL goes
                    batch = training_batch(run, groups, stage, self.reference, self.entropy)
                    update = policy_update(run, batch, stage)
                step += 1
                if self.worker is not None:
                    self.worker.publish(step, run.model)  # version `step`: the weights step `step` starts from
                eval_metrics = self._maybe_eval(step, timer)
                self.schedule.advance(step, eval_metrics)
                run.scheduler.step()  # after advance: the next step's LR sees a stage that just ended early
                metrics = self._metrics(groups, info, update, stage, timer, time.perf_counter() - started)
                if self.schedule.count_tokens(metrics["completion_tokens"]):  # the same sum on every rank
                    run.logger.event(f"step {step}: {self.schedule.sampled_tokens} sampled tokens reach "
                                     f"trainer.max_sampled_tokens={cfg.trainer.max_sampled_tokens}; the run ends here")
                metrics["completion_tokens/total"] = self.schedule.sampled_tokens
                metrics.update(eval_metrics or {})
                metrics.update(self.worker.metrics(step - 1, run.dist.world_size) if self.worker is not None else {})
                if step == run.start_step + 1:
                    metrics.update(run.topology())  # world size and engine, in the run's first metrics row
                run.logger.log(step, metrics)
                self._maybe_samples(step, batch)
                if cfg.trainer.save_steps and step % cfg.trainer.save_steps == 0 and not self.schedule.finished(step):
                    run.save(step, self.state())
            if cfg.trainer.save_final and run.start_step < step:
                run.save(step, self.state())
        finally:
            if self.worker is not None:
                self.worker.close()
            run.close()
            for composite in self._composites.values():
                composite.close()
        return run.run_dir

    def _take_async(self, step: int) -> tuple[list[Group], dict[str, Any]]:
        """`step`'s groups from the rollout worker; the prompt order and random state after them become the
        trainer's, so a checkpoint of this step resumes the worker where this batch left it."""
        batch = self.worker.take(step)
        self.generator.set_state(batch.state["generator"])
        self._saved_samplers = {**getattr(self, "_saved_samplers", {}), **batch.state["samplers"]}
        return batch.groups, batch.info

    def _maybe_eval(self, step: int, timer: PhaseTimer) -> dict[str, float] | None:
        every = self.cfg.trainer.eval_steps
        if not every or step % every or not self.eval_samples:
            return None
        from mmrl.eval.evaluate import evaluate
        from mmrl.eval.report import flat_metrics

        if self.cfg.env.name:  # multi-turn: greedy episodes from the held-out starts
            return self._eval_episodes(timer)
        with timer("eval"):
            self.run.model.eval()
            out_dir = self.run.run_dir / "eval" / f"step-{step}"
            report = evaluate(self.run.model, self.run.processor, self.eval_samples, self.cfg.eval, self.cfg.data,
                              out_dir, progress=False, interface=self.interface) if self.run.dist.is_main else {}
            self.run.model.train()
        report = all_gather_objects(report, self.run.dist.world_size)[0]
        return flat_metrics(report)

    def _eval_episodes(self, timer: PhaseTimer) -> dict[str, float]:
        """`eval/episode/*`: one greedy episode from each of data.eval's starts (main process)."""
        with timer("eval"):
            self.run.model.eval()
            report = evaluate_episodes(self.cfg, self.eval_samples, self.run.model, self.run.processor,
                                       self.interface) if self.run.dist.is_main else {}
            self.run.model.train()
        report = all_gather_objects(report, self.run.dist.world_size)[0]
        return {f"eval/{k}": v for k, v in report.items()}

    def _maybe_samples(self, step: int, batch: TrainingBatch) -> None:
        every = self.cfg.trainer.sample_steps
        if not every or step % every:
            return
        groups, advantages = [g.group for g in batch.groups], [g.advantages for g in batch.groups]
        if self.cfg.env.name:
            if self.run.dist.is_main:
                self.run.logger.write_samples(step, episode_sample_rows(groups, advantages, step, self.run.run_dir))
            return
        rows = []
        for group, group_advantages in zip(groups[:4], advantages):
            # The columns the rewards saw (task, sizes, box frame, the model's frame), so `mmrl reward score` on this
            # file reads boxes and points as the run did.
            columns = {**group.sample.reward_columns(), "model_frame": self.interface.pred_frame}
            for i, text in enumerate(group.texts):
                rows.append({**columns, "id": group.sample.id, "answer": group.sample.answer, "completion": text,
                             "reward": float(group.rewards[i]), "advantage": float(group_advantages[i]),
                             **{f"reward/{k}": v[i] for k, v in group.components.items()},
                             # image paths, so `mmrl demo runs` shows the picture next to the completion
                             "images": [str(p) for p in group.sample.images if isinstance(p, (str, Path))]})
        self.run.logger.write_samples(step, rows)

    def _metrics(self, groups: list[Group], info: dict, update: dict, stage: ResolvedStage, timer: PhaseTimer,
                 seconds: float) -> dict[str, Any]:
        gathered = all_gather_objects(local_stats(groups), self.run.dist.world_size)
        merged: dict[str, list] = {}
        for part in gathered:
            for key, values in part.items():
                merged.setdefault(key, []).extend(values)
        lengths = merged.get("length", [])
        n_completions = len(lengths)
        metrics: dict[str, Any] = {
            **update,
            "reward/total": _mean(merged.get("reward", [])),
            "completion_length/mean": _mean(lengths),
            "completion_length/min": min(lengths) if lengths else float("nan"),
            "completion_length/max": max(lengths) if lengths else float("nan"),
            "completion_length/clipped_ratio": _mean(merged.get("truncated", [])),
            # tokens of the groups this step trains on (PTST compares arms at equal totals); with online filtering,
            # the rounds' discarded groups are not in it (rollout/generated_tokens: this process's tokens, every round)
            "completion_tokens": sum(lengths),
            # Dr. GRPO's length bias shows in the wrong answers: GRPO's per-sequence normaliser lets them grow
            "completion_length/correct": _mean(merged.get("length_correct", [])),
            "completion_length/incorrect": _mean(merged.get("length_incorrect", [])),
            "frac_zero_std_groups": _mean(merged.get("zero_std", [])),
            "unscorable": sum(1 for r in merged.get("reward", []) if r is None or math.isnan(r)),
            "filtered_groups": info.get("filtered_groups", 0),
            "lr": self.run.scheduler.get_last_lr()[0],
            "samples_per_s": n_completions / seconds if seconds else 0.0,
            "tokens_per_s": sum(lengths) / seconds if seconds else 0.0,
            **stage.metrics(),
            **timer.metrics(),
        }
        for key, values in merged.items():
            if key.startswith("reward/"):
                metrics[key] = _mean([v for v in values if v is not None])
        if "reward/accuracy" in metrics:
            metrics["accuracy"] = metrics["reward/accuracy"]
        if "reward/format" in metrics:
            metrics["format_rate"] = metrics["reward/format"]
        if "loss/kl_mean" in update:
            metrics["kl"] = update["loss/kl_mean"]
        counters = dict(info.get("counters") or {})
        entropy_sum, entropy_tokens = counters.pop("entropy_sum", None), counters.pop("entropy_tokens", 0)
        if entropy_sum is not None and entropy_tokens:
            metrics["entropy"] = entropy_sum / entropy_tokens
        for key, value in counters.items():
            metrics[f"rollout/{key}"] = value
        if "episodes" in info:  # multi-turn: every process's episodes
            metrics.update(episode_metrics([e for part in all_gather_objects(info["episodes"], self.run.dist.world_size)
                                            for e in part]))
        for key, value in (info.get("reward_counters") or {}).items():  # "<name>/timeouts|unscorable|errors"
            metrics[f"reward/{key}"] = value
        return metrics


def train(cfg: MMRLConfig) -> Path:
    """Run GRPO as `cfg` says; returns the run directory."""
    return GRPOLoop(cfg).train()
