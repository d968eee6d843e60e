"""The asynchronous rollout worker's side (`mmrl.rl.async_rollout` is the trainer's): a process with its own copy of
the policy that samples each step with the weights of the version `sampled_version` names and sends each batch whole
(`mmrl.rl.worker_pipe`)."""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as mp

from mmrl.config import MMRLConfig
from mmrl.data.prompt_order import PromptSampler
from mmrl.data.sample import Sample
from mmrl.errors import UserError
from mmrl.faults import fault_point
from mmrl.generation.backends import make_backend
from mmrl.models.interface import ModelInterface
from mmrl.rewards.composite import RewardComposite
from mmrl.rl.experience import Group, collect_step
from mmrl.rl.stages import StageSchedule
from mmrl.rl.worker_pipe import send_whole

POLL_S = 0.5  # how often a waiting worker checks that its trainer still lives (and the trainer, the worker)


@dataclass
class WorkerSpec:
    """Everything the worker process starts from (pickled into it once)."""

    cfg: MMRLConfig
    model: torch.nn.Module  # a copy of the policy at version `start`
    processor: Any
    interface: ModelInterface | None
    datasets: dict[str, list[Sample]]  # the trainer's checked datasets, by spec key
    generator_state: torch.Tensor
    sampler_states: dict[str, dict[str, Any]]
    start: int  # first step to sample (the run's start step; also the version of `model`)
    end: int  # one past the last step
    max_staleness: int
    device: str
    rank: int = 0  # DDP: this worker's trainer rank; it draws that rank's share of each step's prompts
    world_size: int = 1


@dataclass
class VersionedBatch:
    """One step's groups, the version of the weights that sampled them, and the worker's state after drawing them."""

    step: int
    version: int
    groups: list[Group]
    info: dict[str, Any]
    state: dict[str, Any]  # {"generator": tensor, "samplers": {key: state}}: what a checkpoint after this step saves
    first_draw: int  # global draw index of the step's first prompt: consecutive steps draw consecutive prompts
    seconds: float  # the worker's time to roll out and score the step


@dataclass
class WorkerFailure:
    step: int
    message: str


def sampled_version(step: int, start: int, max_staleness: int) -> int:
    """The version whose weights sample `step`'s groups.

    >>> [sampled_version(t, 0, 1) for t in range(4)]
    [0, 0, 1, 2]
    >>> [sampled_version(t, 5, 2) for t in range(5, 9)]  # resumed at 5: the first steps are on-policy
    [5, 5, 5, 6]
    """
    return max(step - max_staleness, start)


def spec_key(specs: tuple) -> str:
    """A stable cache key for a tuple of config models (pydantic models are not hashable): the trainer's and the
    worker's, so prompt-order states saved by either side match."""
    return json.dumps([item.model_dump(mode="json") for item in specs], sort_keys=True)


class _WorkerParts:
    """The worker's per-stage parts, built once per spec like the trainer's."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.cfg = spec.cfg
        self.schedule = StageSchedule(spec.cfg.stages, spec.cfg)  # no until_metric (refused): a pure step -> stage
        self.backend = make_backend(
            spec.model,
            spec.processor,
            "hf",
            share_prompt=spec.cfg.rollout.share_prompt,
            data_cfg=spec.cfg.data,
            rollout_cfg=spec.cfg.rollout,
        )
        self.generator = torch.Generator(device=spec.device)
        self.generator.set_state(spec.generator_state)
        self.samplers: dict[str, PromptSampler] = {}
        self.composites: dict[str, RewardComposite] = {}

    def sampler(self, key: str) -> PromptSampler:
        if key not in self.samplers:
            sampler = PromptSampler(len(self.spec.datasets[key]), self.cfg.trainer.seed, self.cfg.data.shuffle)
            if key in self.spec.sampler_states:
                sampler.load_state_dict(self.spec.sampler_states[key])
            self.samplers[key] = sampler
        return self.samplers[key]

    def collect(self, step: int) -> tuple[list[Group], dict[str, Any], int]:
        stage = self.schedule.stage_at(step)
        specs = stage.data or tuple(self.cfg.data.train)
        key = spec_key(specs)
        sampler = self.sampler(key)
        first_draw = sampler.epoch * sampler.n_items + sampler.position
        rewards_key = spec_key(stage.rewards)
        if rewards_key not in self.composites:
            self.composites[rewards_key] = RewardComposite(list(stage.rewards))
        data_cfg = (
            self.cfg.data
            if stage.prompt_suffix is None
            else self.cfg.data.model_copy(update={"prompt_suffix": stage.prompt_suffix})
        )
        groups, info = collect_step(
            self.cfg,
            stage,
            self.spec.datasets[key],
            sampler,
            self.spec.rank,
            self.spec.world_size,
            processor=self.spec.processor,
            backend=self.backend,
            composite=self.composites[rewards_key],
            generator=self.generator,
            data_cfg=data_cfg,
            interface=self.spec.interface,
        )
        return groups, info, first_draw

    def state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "samplers": {key: s.state_dict() for key, s in self.samplers.items()},
        }

    def close(self) -> None:
        for composite in self.composites.values():
            composite.close()


def _load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _next_message(weights_in: Any) -> Any:
    """The trainer's next message; exits when the trainer is gone (killed: nobody would ever read this worker's
    batches, and a child outlives a SIGKILLed parent)."""
    parent = mp.parent_process()
    while True:
        try:
            return weights_in.get(timeout=POLL_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                raise SystemExit(0) from None
        except Exception:  # weights the trainer published, then died: their shared memory went with it
            if parent is not None:
                parent.join(POLL_S)  # its end (sentinel) may trail the refused connection by a moment
                if not parent.is_alive():
                    raise SystemExit(0) from None
            raise


def worker_main(spec: WorkerSpec, weights_in: Any, batches_out: Any) -> None:
    """The worker process: for each step, wait for the version that samples it, roll out, send the whole batch."""
    if spec.cfg.rollout.worker_threads:
        torch.set_num_threads(spec.cfg.rollout.worker_threads)
    step = spec.start
    parts = None
    try:
        parts = _WorkerParts(spec)
        spec.model.eval()
        version = spec.start
        for step in range(spec.start, spec.end):
            wanted = sampled_version(step, spec.start, spec.max_staleness)
            while version < wanted:  # versions arrive in order, one per optimizer step; none is skipped past
                version, weights = _next_message(weights_in)
                _load_weights(spec.model, weights)
            started = time.perf_counter()
            with torch.no_grad():
                groups, info, first_draw = parts.collect(step)
            batch = VersionedBatch(
                step, version, groups, info, parts.state(), first_draw, time.perf_counter() - started
            )
            fault_point("rollout.worker")  # crash tests: die or hang with a batch ready, before it is sent
            send_whole(batches_out, batch)
        # Wait for the trainer's stop (its `close`); a killed trainer ends the wait too (`_next_message`).
        while _next_message(weights_in) is not None:
            pass
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure becomes the trainer's one line
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        send_whole(batches_out, WorkerFailure(step, text))
        raise SystemExit(1) from None
    finally:
        if parts is not None:
            parts.close()
