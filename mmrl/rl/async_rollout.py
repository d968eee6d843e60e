"""Asynchronous rollouts (`rollout.max_staleness = k >= 1`): a worker process samples while the trainer updates.

The worker holds its own copy of the policy and calls `collect_step`, the synchronous loop's own collect function,
so a group carries what it carries there (images, prompt ids, completions, the sampler's log-probs, rewards). The
groups of step t are sampled by the weights of version max(t - k, start), where version v means "the weights the
trainer holds at the start of step v" (the resume step's checkpoint is version `start`). The worker waits for
exactly that version, so which weights sampled which step never depends on timing:

    trainer: | update 0 (v0) | update 1 (v1) | update 2 (v2) |        k = 1
    worker:  | roll 0 (v0), roll 1 (v0) | roll 2 (v1) | roll 3 (v2) |

Atomic versions: weights arrive as one message per optimizer step and are loaded between two batches only, so a
step's groups never mix two versions. A batch is one message, sent when complete; the trainer checks its step and
version and trains on nothing else. A worker that dies, fails or sends nothing for `rollout.worker_timeout_s`
stops the run with one line (the last checkpoint resumes it).

Resume: the batch carries the worker's prompt-order and random state after it was drawn; the trainer keeps the state
of the last batch it trained on and saves that in its checkpoints. On resume the in-flight batches (drawn, never
trained on) are dropped and regenerated from the same prompt positions by the checkpoint's weights: no prompt is
trained twice or skipped; the first step after a resume is on-policy and the staleness climbs back to k (logged).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as mp

from mmrl.config import MMRLConfig
from mmrl.data.sample import Sample
from mmrl.errors import UserError
from mmrl.models.interface import ModelInterface
from mmrl.parallel.distributed import all_gather_objects
from mmrl.rl.rollout_worker import POLL_S, VersionedBatch, WorkerFailure, WorkerSpec, sampled_version, worker_main
from mmrl.rl.worker_pipe import PipeEnded, PipeReader

_START_S = 600.0  # the least time for the first batch (spawn, imports, model copy, first rollout) before a hang


def merge_rank_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One row from every rank's `async/*` figures: the step's staleness (the largest), the oldest version, the
    slowest wait and rollout (the step waits for the slowest rank), and each rank's own as `async/rank<r>/*`.

    >>> row = merge_rank_metrics([{"async/staleness": 1, "async/wait_s": 0.0}, {"async/staleness": 1, "async/wait_s": 2.5}])
    >>> row["async/wait_s"], row["async/rank0/wait_s"], row["async/rank1/staleness"]
    (2.5, 0.0, 1)
    """
    merged: dict[str, float] = {}
    for key in per_rank[0]:
        values = [part[key] for part in per_rank]
        merged[key] = min(values) if key == "async/sampled_version" else max(values)
    for rank, part in enumerate(per_rank):
        merged.update({key.replace("async/", f"async/rank{rank}/", 1): value for key, value in part.items()})
    return merged


@dataclass
class AsyncRollout:
    """The trainer's side: start the worker, take each step's batch, publish each new version, stop it."""

    max_staleness: int
    timeout_s: float
    start: int
    trainable: list[str]
    process: Any = None
    weights_out: Any = None
    batches_in: PipeReader | None = None
    last: VersionedBatch | None = None
    waited_s: float = 0.0
    ready: bool = False

    @classmethod
    def launch(
        cls,
        cfg: MMRLConfig,
        model: torch.nn.Module,
        processor: Any,
        interface: ModelInterface | None,
        datasets: dict[str, list[Sample]],
        generator: torch.Generator,
        sampler_states: dict[str, dict[str, Any]],
        start: int,
        end: int,
        max_staleness: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> AsyncRollout:
        """Copy the policy (weights of version `start`) into a new worker process and start it sampling.

        DDP: every rank launches its own worker, with the rank's own random state and share of the prompts, so the
        worker samples exactly what that rank's synchronous loop would (the prompt order is one for all ranks)."""
        ctx = mp.get_context("spawn")  # a fork would share the trainer's threads and locks in an unknown state
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        spec = WorkerSpec(
            cfg=cfg,
            model=copy.deepcopy(model),
            processor=processor,
            interface=interface,
            datasets=datasets,
            generator_state=generator.get_state(),
            sampler_states=sampler_states,
            start=start,
            end=end,
            max_staleness=max_staleness,
            device=str(generator.device),
            rank=rank,
            world_size=world_size,
        )
        # Batches come through a one-way pipe whose only writer is the worker, so its death ends the pipe (an end of
        # file, or a message cut short); a thread reads it, so a worker frozen inside a message still times out.
        reader, writer = ctx.Pipe(duplex=False)
        rollout = cls(
            max_staleness=max_staleness,
            timeout_s=cfg.rollout.worker_timeout_s,
            start=start,
            trainable=trainable,
            weights_out=ctx.Queue(),
            batches_in=PipeReader(reader, name=f"mmrl-rollout-reader-{rank}"),
        )
        rollout.process = ctx.Process(
            target=worker_main, args=(spec, rollout.weights_out, writer), name=f"mmrl-rollout-worker-{rank}"
        )  # not a daemon: rewards start their own processes
        rollout.process.start()
        writer.close()  # the worker's copy is the only one left
        return rollout

    def take(self, step: int) -> VersionedBatch:
        """`step`'s batch, sampled by version `sampled_version(step)`; one line (UserError) if the worker died,
        failed or hung."""
        started = time.perf_counter()
        resume = "the run stops (resume it from its last checkpoint with trainer.resume=auto)"
        while True:
            item = self.batches_in.get(POLL_S)  # whole messages only: a batch cut off is never handed on
            if item is None and not self.process.is_alive():  # what it sent whole before it died still counts
                item = self.batches_in.get(5.0) or PipeEnded()
            if isinstance(item, PipeEnded):
                self.process.join(5)
                code = self.process.exitcode
                cut = item.error is not None  # it ended inside a message: none of that message is used
                if cut and code is None:  # the worker lives: the message itself did not unpickle
                    raise self._stop(
                        f"its batch for step {step} arrived broken ({type(item.error).__name__}); {resume}"
                    )
                when = "while sending" if cut else "before sending"
                raise self._stop(f"the process died (exit code {code}) {when} step {step}'s groups; {resume}")
            if isinstance(item, WorkerFailure):
                self.close()
                raise UserError(f"rollout worker failed at step {item.step}: {item.message}")
            if item is not None:
                break
            limit = self.timeout_s if self.ready else max(self.timeout_s, _START_S)
            if time.perf_counter() - started > limit:
                raise self._stop(
                    f"no groups for step {step} within rollout.worker_timeout_s={self.timeout_s:g} s; stopped it and "
                    "the run (raise the timeout if rollouts are that slow, or resume with trainer.resume=auto)"
                )
        expected = sampled_version(step, self.start, self.max_staleness)
        if item.step != step or item.version != expected:  # never train on a batch that is not this step's
            self.close()
            raise RuntimeError(
                f"rollout worker sent step {item.step} (version {item.version}); the trainer "
                f"expected step {step} sampled by version {expected}"
            )
        self.waited_s = time.perf_counter() - started
        self.ready = True
        self.last = item
        return item

    def _stop(self, what: str) -> UserError:
        """Stop the worker; the one line that stops the run."""
        self.close()
        return UserError(f"rollout worker: {what}")

    def publish(self, version: int, model: torch.nn.Module) -> None:
        """Send the weights the trainer holds now (after its optimizer step) as `version`: the trainable
        parameters only (a frozen tower or a LoRA base never changes)."""
        params = dict(model.named_parameters())
        self.weights_out.put((version, {name: params[name].detach().clone() for name in self.trainable}))

    def metrics(self, step: int, world_size: int = 1) -> dict[str, float]:
        """`async/*` figures of the batch `step` trained on (the correction's are update's `rollout/*`). With several
        processes every rank calls this (it gathers): see `merge_rank_metrics`."""
        local = self._local_metrics(step)
        return merge_rank_metrics(all_gather_objects(local, world_size)) if world_size > 1 else local

    def _local_metrics(self, step: int) -> dict[str, float]:
        batch = self.last
        if batch is None:
            return {}
        return {
            "async/staleness": step - batch.version,
            "async/sampled_version": batch.version,
            "async/first_draw": batch.first_draw,
            "async/wait_s": self.waited_s,
            "async/worker_rollout_s": batch.seconds,
        }

    def close(self) -> None:
        """Stop the worker; batches it drew ahead are dropped (a resume regenerates them)."""
        if self.process is not None and self.process.is_alive():
            try:
                self.weights_out.put(None)  # a worker done with its steps exits on its own
                self.process.join(1)
            except (ValueError, OSError):  # the queue is closed already
                pass
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        if self.weights_out is not None:
            self.weights_out.cancel_join_thread()  # unread weights must not hold the trainer's exit
            self.weights_out.close()
        if self.batches_in is not None:
            self.batches_in.close()  # after the worker is gone: its reader thread has seen the end
        self.weights_out = self.batches_in = None
