"""DeepSpeed ZeRO-2: mmrl's data-parallel engine (`accelerate launch` with a configs/accelerate/deepspeed_* preset).

How it meets the RL update, whose processes may run different numbers of micro-batch backwards per optimizer step:
- between optimizer steps `ZeRO2Engine` holds DeepSpeed's gradient reduction back, as its `coalesce_grad_reduction()`
  block does (the same two switches; the block itself is a generator whose exit always reduces, so one left open at
  the end of a run would reduce during interpreter shutdown): every backward leaves its gradients on the parameters
  (DeepSpeed's per-backward ZeRO-2 reduction would be a collective only some processes reach);
- at the optimizer step every process releases the hold and runs the synchronising pass (0 x every trainable
  parameter) through `engine.backward`: DeepSpeed's hooks then reduce (average) each parameter's accumulated gradient
  once, into each process's partition, in the same order on every process;
- DeepSpeed's step clips to `optimizer.max_grad_norm` and skips a step whose gradient norm is not finite; a
  non-finite loss poisons the synchronising pass (nan x parameters) so that step is skipped the same way.
The optimizer is mmrl's own (`build_optimizer`), handed to DeepSpeed: ZeRO partitions its state and steps it on flat
fp32 partitions (element-wise the same AdamW), and the LR scheduler mmrl builds on it still sets its learning rate.
ZeRO-3 is not offered. Its per-layer parameter gathering copes with the shared-prefix forward (a layer run for the
prompt, then for the completions, checkpointed or not: measured equal to ZeRO-2's update on CPU), but each gather is a
collective at every forward and backward of a layer, and mmrl's processes run different numbers of them (each rank's
rollout ends when its own completions do; zero-advantage groups skip their forwards): measured on CPU, a rank running
one forward more than the other hangs both.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.distributed as dist

from mmrl.checkpoints.store import ZERO_PARTITIONS
from mmrl.errors import UserError
from mmrl.parallel.distributed import DistInfo
from mmrl.parallel.engine import TrainingEngine, policy_weights
from mmrl.parallel.host_group import host_group

PRESET = "accelerate config (deepspeed_config)"


def zero_config(max_grad_norm: float | None) -> dict[str, Any]:
    """The DeepSpeed config from the preset's choices (which accelerate passes to its workers in the environment);
    what mmrl does not support is a one-line error."""
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage != 2:
        why = (" (ZeRO-3's per-layer gathers would hang: processes run different numbers of forwards)"
               if stage == 3 else "")
        raise UserError(f"{PRESET}: zero_stage: {stage} is not supported by mmrl's trainer{why}; use zero_stage: 2 "
                        "(configs/accelerate/deepspeed_zero2.yaml) or, to shard parameters, configs/accelerate/fsdp.yaml")
    for key in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if os.environ.get(key, "none") not in ("none", ""):
            field = key.removeprefix("ACCELERATE_DEEPSPEED_").lower()
            raise UserError(f"{PRESET}: {field}: {os.environ[key]} is not supported by mmrl's trainer; set it to none")
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise UserError(f"{PRESET}: deepspeed_config_file is not read by mmrl's trainer (it builds the DeepSpeed "
                        "config from zero_stage and optimizer.*); remove it and set zero_stage")
    gas = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    if gas not in ("1", ""):
        raise UserError(f"{PRESET}: gradient_accumulation_steps: {gas}; mmrl accumulates over algorithm.mini_batches "
                        "itself, set it to 1")
    clip = os.environ.get("ACCELERATE_GRADIENT_CLIPPING", "")
    if clip not in ("", "none") and float(clip) != float(max_grad_norm or 0.0):
        raise UserError(f"{PRESET}: gradient_clipping: {clip} differs from optimizer.max_grad_norm "
                        f"({max_grad_norm}); mmrl clips to optimizer.max_grad_norm: remove gradient_clipping")
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,  # one mmrl optimizer step = one coalesced reduction + one engine step
        "gradient_clipping": float(max_grad_norm or 0.0),
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,  # mmrl's torch AdamW / SGD, stepped on ZeRO's flat partitions
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def check_deepspeed(max_grad_norm: float | None) -> None:
    """What a DeepSpeed launch needs, checked before the model loads: DeepSpeed installed, a preset mmrl supports."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"{PRESET}: DeepSpeed is not installed; pip install 'mmrl[deepspeed]'")
    zero_config(max_grad_norm)


class ZeRO2Engine(TrainingEngine):
    """The training forward inside a DeepSpeed ZeRO-2 engine, made in `start` from mmrl's optimizer (see the module
    doc; `TrainingEngine` for the calls)."""

    name = "deepspeed"
    whole_model_per_process = False
    owns_optimizer = True

    def __init__(self, policy: torch.nn.Module, dist_info: DistInfo) -> None:
        super().__init__(policy, dist_info)
        self.ds: Any = None  # the DeepSpeed engine (`start`: it needs the optimizer)

    def start(self, optimizer: torch.optim.Optimizer | None = None, max_grad_norm: float | None = None) -> None:
        device = next(self.module.parameters()).device
        if device.type == "cpu":
            # DeepSpeed picks its CUDA accelerator whenever a GPU is visible and would move a CPU run's module and
            # buffers there (gloo cannot reduce them); it reads this before its first import.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            import deepspeed
        except ImportError:
            raise UserError(f"{PRESET}: DeepSpeed is not installed; pip install 'mmrl[deepspeed]'") from None
        config = zero_config(max_grad_norm)
        deepspeed.init_distributed(dist_backend=dist.get_backend())  # joins the group mmrl already made
        # DeepSpeed broadcasts rank 0's parameters at initialisation: every rank starts from the same weights.
        self.ds, _, _, _ = deepspeed.initialize(model=self.module, optimizer=optimizer, config=config,
                                                dist_init_required=False)
        needed = (hasattr(self.ds, "inside_no_sync_ctxt") and hasattr(self.ds.optimizer, "_coalesce_grad_reduction")
                  and hasattr(self.ds, "_support_torch_style_backward"))  # the update calls .backward() itself
        if not needed:
            raise UserError(f"{PRESET}: this DeepSpeed version ({deepspeed.__version__}) cannot hold gradient "
                            "reduction back between optimizer steps; pip install 'mmrl[deepspeed]' (the tested one)")
        self._hold(True)

    def _hold(self, on: bool) -> None:
        """Hold every gradient reduction back (on) or let the next backward reduce (off): what DeepSpeed's
        `coalesce_grad_reduction()` switches on entry and off on exit."""
        self.ds.inside_no_sync_ctxt = on  # the engine's post-backward reduction
        self.ds.optimizer._coalesce_grad_reduction = on  # ZeRO's per-parameter gradient hooks

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.ds(*args, **kwargs)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Reduce the accumulated gradients into each process's partition (`step` runs this reduction itself:
        call one of the two per optimizer step, not both)."""
        self._reduce(scale=0.0)

    def _reduce(self, scale: float) -> None:
        self._hold(False)
        self.ds.backward(self.ds(sync_only=True, scale=scale))  # the one gradient reduction of this optimizer step

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss_value: float,
             max_grad_norm: float | None) -> tuple[float, bool]:
        """Reduce once (every process), then DeepSpeed clips (to the `max_grad_norm` its config was made with) and
        steps; returns (grad_norm, stepped)."""
        self._reduce(scale=0.0 if math.isfinite(loss_value) else math.nan)  # nan: poisons the step, so it is skipped
        self.ds.step()  # skipped by DeepSpeed when the gradient norm is not finite (the nan pass above included)
        norm = self.ds.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else float("nan")
        stepped = math.isfinite(loss_value) and math.isfinite(grad_norm)
        self.ds.zero_grad()
        self._hold(True)
        return grad_norm, stepped

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Every process's partition of the optimizer state, gathered on the main process's host (every process
        calls). Through the host (gloo) group: over NCCL, gather_object pickles into a (world x largest partition)
        buffer on GPU 0 (every partition of the fp32 master weights and both Adam moments on one GPU, next to its
        model); and the tensors are copied to the CPU first, else they would unpickle onto another process's GPU."""
        local = _to_cpu(self.ds.optimizer.state_dict())
        gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(local, gathered, dst=0, group=host_group())
        return {ZERO_PARTITIONS: gathered}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Each process loads its own partition; the fp32 master partitions are refreshed from the model weights
        (already loaded from the checkpoint, fp32: exact)."""
        clip = self.ds.optimizer.clip_grad
        self.ds.optimizer.load_state_dict(state[ZERO_PARTITIONS], load_optimizer_states=True,
                                          load_from_fp32_weights=False)
        self.ds.optimizer.clip_grad = clip  # the loaded state carries the saved run's clip; this run's config rules

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """The policy's state dict as separate tensors on the main process (ZeRO keeps the parameters as views of
        one flat buffer, which `save_pretrained` would take for shared tensors); None elsewhere."""
        if dist.get_rank() != 0:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in policy_weights(self.ds.module.state_dict()).items()}


def _to_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it copied to the CPU (dicts, lists and tuples walked)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
