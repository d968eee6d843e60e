"""A Python API in the shape TRL users know, on top of mmrl's config tree and its one GRPO loop.

    from mmrl import GRPOConfig, GRPOTrainer

    def exact(completions, answer, **_):          # batched: one list in, one list out (None = unscorable)
        return [1.0 if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer)]

    trainer = GRPOTrainer(model="tiny", reward_funcs=[exact, "format"], train_dataset=records,
                          args=GRPOConfig(max_steps=2, num_generations=4, output_dir="runs/api"))
    trainer.train()

- `model`: a hub id, a local path, a preset (`tiny`, `small`), or a loaded `PreTrainedModel` (give its processor as
  `processing_class`): a loaded model is saved into the run directory first, and the trained weights are copied back
  into it at the end.
- `reward_funcs`: registered reward names (`"accuracy"`, `"format"`, ...), `"file.py:function"` specs, or callables
  `fn(completions: list[str], **columns) -> list[float | None]`; `reward_weights` weighs them (default 1 each).
- `train_dataset`: a path (any format `mmrl data show` reads), a Hugging Face `Dataset`, or a list of dicts; in-memory
  records (PIL images included) are written once to `$MMRL_CACHE/datasets/<hash>/` so the run's config names them.
- `args`: a `GRPOConfig(...)`, an `MMRLConfig`, a YAML path, or a dict (sections or dotted keys).

`train()` runs `mmrl.rl.trainer` exactly as `mmrl train` does and returns a `TrainOutput` (TRL's `global_step`,
`training_loss`, `metrics`, and the `run_dir`; path-like, so it still works where the run directory was used).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.config import MMRLConfig, trl_names
from mmrl.errors import UserError
from mmrl.preflight import apply_overrides, build_config, load_config

_SECTIONS = ("model", "data", "rollout", "algorithm", "optimizer", "trainer", "eval")
log = logging.getLogger(__name__)


def _leaf_names() -> dict[str, list[str]]:
    """Field name -> dotted keys it names in the sections (unique names may be given bare)."""
    names: dict[str, list[str]] = {}
    for section in _SECTIONS:
        for field in MMRLConfig.model_fields[section].annotation.model_fields:  # type: ignore[union-attr]
            names.setdefault(field, []).append(f"{section}.{field}")
    return names


def _is_trl(key: str) -> bool:
    return key in trl_names.SAME or key in trl_names.REFUSED or key in trl_names.NO_EFFECT or key == "fp16" \
        or key in trl_names.BATCH or key in trl_names.ADAM_BETAS


def _dotted(key: str) -> str:
    """The dotted key of a setting given by an mmrl name (raises UserError with the nearest name otherwise)."""
    if "." in key or key in MMRLConfig.model_fields:
        return key
    matches = _leaf_names().get(key, [])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(f"'{key}' is ambiguous ({', '.join(matches)}); pass a dict with the dotted key")
    known = [*trl_names.SAME, *trl_names.BATCH, *_leaf_names(), *MMRLConfig.model_fields]
    near = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else " (see `mmrl config show --doc` for the keys)"
    raise UserError(f"unknown setting '{key}'{hint}")


def GRPOConfig(config: str | os.PathLike | None = None, **settings: Any) -> MMRLConfig:  # noqa: N802 (TRL's name)
    """The config tree (`MMRLConfig`) from an optional YAML plus settings given as TRL names (`learning_rate`,
    `num_generations`, `per_device_train_batch_size`, `bf16`, `report_to`: `mmrl.config.trl_names`), mmrl field
    names (`prompts_per_step`) or whole sections (`trainer={...}`). Every refused or unknown name is reported at
    once, in one line, with the mmrl name to use.

    >>> cfg = GRPOConfig(max_steps=3, learning_rate=1e-5, num_generations=4)
    >>> cfg.trainer.max_steps, cfg.optimizer.lr, cfg.rollout.group_size
    (3, 1e-05, 4)
    """
    base = load_config(config) if config is not None else MMRLConfig()
    overrides: dict[str, Any] = {}
    problems: list[str] = []
    trl = {key: value for key, value in settings.items() if _is_trl(key)}
    for key, value in settings.items():
        if key in trl:
            continue
        if key in MMRLConfig.model_fields and isinstance(value, Mapping):
            overrides.update({f"{key}.{k}": v for k, v in _flatten(value)})
            continue
        try:
            overrides[_dotted(key)] = value
        except UserError as err:
            problems.append(str(err))
    group_size = overrides.get("rollout.group_size", base.rollout.group_size)
    iterations = overrides.get("algorithm.num_iterations", base.algorithm.num_iterations)
    translated = trl_names.translate(trl, group_size, iterations=iterations)
    problems += translated.problems
    trl_overrides = translated.without(set(overrides))
    for key in sorted(set(trl_overrides) & set(overrides)):
        problems.append(f"{key} is set twice (by TRL's {translated.origin[key]} and by its mmrl name); give one")
    if problems:
        raise UserError("GRPOConfig: " + "; ".join(problems))
    for note in translated.notes:
        log.warning("GRPOConfig: %s", note)
    overrides = {**trl_overrides, **overrides}
    return apply_overrides(base, overrides, source="GRPOConfig") if overrides else base


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in mapping.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, dotted)
        else:
            yield dotted, value


def _config_from(args: Any) -> MMRLConfig:
    if args is None:
        return MMRLConfig()
    if isinstance(args, MMRLConfig):
        return args.model_copy(deep=True)
    if isinstance(args, (str, os.PathLike)):
        return load_config(args)
    if isinstance(args, Mapping):
        if any("." in str(k) for k in args):
            return apply_overrides(MMRLConfig(), dict(args), source="args")
        return build_config(dict(args), default_source="args", explicit=list(dict(_flatten(args))))
    raise UserError(f"args must be a GRPOConfig/MMRLConfig, a YAML path or a dict (got {type(args).__name__})")


# ---- rewards ---------------------------------------------------------------------------------------------------
def _callable_name(fn: Callable[..., Any], taken: set[str]) -> str:
    """The name a user callable is known by: its own, suffixed when a registered reward or another callable has it."""
    from mmrl.rewards.registry import list_rewards

    taken = taken | set(list_rewards())  # the built-ins first, so a user's `accuracy` cannot shadow ours
    base = getattr(fn, "__name__", "reward").strip("<>") or "reward"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


@contextlib.contextmanager
def registered(callables: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """Register user callables by name for the duration of a run (so `mmrl reward list` and later runs never see
    them); the composite then scores them like any registered reward."""
    from mmrl.rewards.registry import REWARDS, register_reward

    added = []
    try:
        for name, fn in callables.items():
            def reward(completions: list[str], _fn=fn, **columns: Any) -> Any:
                return _fn(completions, **columns)  # a per-item reward is reported by the composite as such

            reward.__doc__ = fn.__doc__
            register_reward(name)(reward)
            added.append(name)
        yield
    finally:
        for name in added:
            REWARDS.remove(name)


def _reward_specs(reward_funcs: Any, weights: Sequence[float] | None,
                  callables: dict[str, Callable[..., Any]]) -> list[dict[str, Any]]:
    """Reward specs for the config; callables are added to `callables` under the names the specs use."""
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if weights is not None and len(weights) != len(funcs):
        raise UserError(f"reward_weights has {len(weights)} values for {len(funcs)} reward_funcs")
    specs = []
    for i, fn in enumerate(funcs):
        if isinstance(fn, str):
            from mmrl.rewards.registry import get_reward

            get_reward(fn)  # unknown names fail here, with the nearest name
            name = fn
        elif callable(fn):
            name = _callable_name(fn, set(callables))
            callables[name] = fn
        else:
            raise UserError(f"reward_funcs[{i}] must be a reward name or a callable (got {type(fn).__name__})")
        specs.append({"name": name, "weight": float(weights[i]) if weights is not None else 1.0})
    return specs


# ---- data ------------------------------------------------------------------------------------------------------
def _datasets_dir() -> Path:
    root = os.environ.get("MMRL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmrl")
    return Path(root) / "datasets"


def _png(image: Any) -> bytes | None:
    """PNG bytes of a PIL image or a datasets image dict ({"bytes", "path"}); None for anything else."""
    if isinstance(image, Mapping) and image.get("bytes"):
        return bytes(image["bytes"])
    if hasattr(image, "save") and hasattr(image, "size"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    return None


def _materialise(records: Iterable[Mapping[str, Any]]) -> Path:
    """Write in-memory records (images as PNG files named by content) to a JSONL in the cache; return its path."""
    images: dict[str, bytes] = {}

    def convert(value: Any) -> Any:
        data = _png(value)
        if data is not None:
            name = f"images/{hashlib.sha1(data).hexdigest()[:16]}.png"
            images[name] = data
            return name
        if isinstance(value, Mapping) and value.get("path") and not value.get("bytes"):
            return str(Path(value["path"]).resolve())
        if isinstance(value, str) and value and Path(value).is_file():
            return str(Path(value).resolve())
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    lines = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise UserError(f"train_dataset[{i}]: each record must be a dict (got {type(record).__name__})")
        row = {k: convert(v) if k in ("image", "images", "image_path", "file_name") else v for k, v in record.items()}
        try:
            lines.append(json.dumps(row, ensure_ascii=False))
        except TypeError as err:
            raise UserError(f"train_dataset[{i}]: a field is not JSON-serialisable ({err})") from None
    if not lines:
        raise UserError("train_dataset is empty")
    text = "\n".join(lines) + "\n"
    out = _datasets_dir() / hashlib.sha1(text.encode()).hexdigest()[:16]
    path = out / "data.jsonl"
    if not path.exists():
        (out / "images").mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            (out / name).write_bytes(data)
        tmp = out / f".data.jsonl.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def _dataset_spec(dataset: Any) -> dict[str, Any]:
    if isinstance(dataset, (str, os.PathLike)):
        return {"path": str(dataset)}
    if isinstance(dataset, Mapping) and "path" in dataset:
        return dict(dataset)
    if hasattr(dataset, "features") and hasattr(dataset, "__iter__"):  # a datasets.Dataset: rows as dicts
        return {"path": str(_materialise(dataset))}
    if isinstance(dataset, (list, tuple)):
        return {"path": str(_materialise(dataset))}
    raise UserError(f"train_dataset must be a path, a datasets.Dataset or a list of dicts (got {type(dataset).__name__})")


# ---- the trainer -----------------------------------------------------------------------------------------------
class GRPOTrainer:
    """TRL-shaped front end: builds the config tree from its arguments; `train()` runs mmrl's GRPO loop."""

    def __init__(self, model: Any = None, reward_funcs: Any = None, args: Any = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None,
                 reward_weights: Sequence[float] | None = None) -> None:
        cfg = _config_from(args)
        updates: dict[str, Any] = {}
        self._user_model = None
        if isinstance(model, (str, os.PathLike)):
            updates["model.name_or_path"] = str(model)
        elif model is not None:
            updates["model.name_or_path"] = str(self._save_loaded(model, processing_class, cfg))
            self._user_model = model
        self.reward_callables: dict[str, Callable[..., Any]] = {}
        self._in_memory: dict[str, str] = {}  # cached JSONL of in-memory records -> the argument that gave them
        if reward_funcs is not None:
            updates["rewards"] = _reward_specs(reward_funcs, reward_weights, self.reward_callables)
        if train_dataset is not None:
            updates["data.train"] = [_dataset_spec(train_dataset)]
            self._note_in_memory(updates["data.train"][0]["path"], "train_dataset")
        if eval_dataset is not None:
            updates["data.eval"] = [_dataset_spec(eval_dataset)]
            self._note_in_memory(updates["data.eval"][0]["path"], "eval_dataset")
        with registered(self.reward_callables):  # the config's reward names are checked against the registry
            self.args = apply_overrides(cfg, updates, source="GRPOTrainer") if updates else cfg
        if self.reward_callables and self.args.rollout.max_staleness:
            # The rollout worker is a process of its own that builds its rewards by name: a function registered
            # here is not in its registry (it failed there after the model loaded, naming an "unknown reward").
            names = ", ".join(sorted(self.reward_callables))
            raise UserError(f"rollout.max_staleness={self.args.rollout.max_staleness}: the rollout worker runs in a "
                            f"process of its own and cannot call the Python reward function(s) {names}; give them "
                            "as 'path/to/file.py:function' in reward_funcs, or set rollout.max_staleness=0")
        self.model = model
        self.run_dir: Path | None = None

    def _note_in_memory(self, path: str, argument: str) -> None:
        if Path(path).parent.parent == _datasets_dir():  # written by _materialise
            self._in_memory[path] = argument

    def _user_location(self, message: str) -> str:
        """A message about in-memory records names the record (`train_dataset[3]`), not the cache file mmrl wrote."""
        for path, argument in self._in_memory.items():
            message = re.sub(re.escape(path) + r":(\d+)", lambda m, a=argument: f"{a}[{int(m.group(1)) - 1}]", message)
        return message

    @staticmethod
    def _save_loaded(model: Any, processor: Any, cfg: MMRLConfig) -> Path:
        if processor is None:
            raise UserError("a loaded model needs its processor: GRPOTrainer(model=..., processing_class=processor)")
        if not hasattr(model, "save_pretrained"):
            raise UserError(f"model must be a hub id, a path or a transformers model (got {type(model).__name__})")
        from mmrl.models.processor import save_processor

        out = Path(cfg.trainer.output_dir + "-initial-model")  # beside the run dir: the run dir stays fresh
        model.save_pretrained(out)
        save_processor(processor, out)  # also where the processor has no video part (no torchvision)
        return out

    def train(self) -> TrainOutput:
        """Run GRPO as the config says (the same loop as `mmrl train`); returns a `TrainOutput` (TRL's fields plus
        `run_dir`; it is path-like, so code that used the run directory it returned before keeps working)."""
        from transformers.utils import logging as hf_logging

        from mmrl.rl.trainer import GRPOLoop

        # The run shows its own progress: transformers' "Loading weights" / "Writing model shards" bars would
        # interleave with it (the CLI silences them for the whole process; here only while training).
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        started = time.perf_counter()
        try:
            with registered(self.reward_callables):
                loop = GRPOLoop(self.args)
                self.run_dir = loop.train()
        except UserError as err:
            raise UserError(self._user_location(str(err))) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        trained = loop.run.model
        if self._user_model is not None:
            self._user_model.load_state_dict(trained.state_dict())
        else:
            self.model = trained
        return TrainOutput.read(self.run_dir, loop.run.start_step, time.perf_counter() - started)


@dataclass(frozen=True, eq=False)
class TrainOutput:
    """What `GRPOTrainer.train()` returns: TRL's `TrainOutput` fields (`global_step`, `training_loss`, `metrics`)
    and the run directory. `os.fspath(out)`, `str(out)`, `out / "metrics.jsonl"` and `out == path` work on the run
    directory, so code written for the path `train()` returned before keeps working."""

    global_step: int
    training_loss: float
    metrics: dict[str, Any]
    run_dir: Path

    @classmethod
    def read(cls, run_dir: Path, start_step: int, seconds: float) -> TrainOutput:
        """From the run's metrics.jsonl: the steps this call ran (a resumed run counts from its checkpoint)."""
        path = Path(run_dir) / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.is_file() else []
        rows = [r for r in rows if isinstance(r.get("step"), int) and r["step"] > start_step]
        losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
        loss = sum(losses) / len(losses) if losses else float("nan")
        last = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}
        metrics = {**last, "train_runtime": seconds, "train_loss": loss}
        return cls(rows[-1]["step"] if rows else start_step, loss, metrics, Path(run_dir))

    def __fspath__(self) -> str:
        return os.fspath(self.run_dir)

    def __str__(self) -> str:
        return str(self.run_dir)

    def __truediv__(self, other: str | os.PathLike) -> Path:
        return self.run_dir / other

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, os.PathLike)) and not isinstance(other, TrainOutput):
            return Path(self.run_dir) == Path(other)  # `trainer.train() == run_dir`, as when it returned the path
        return NotImplemented if not isinstance(other, TrainOutput) else (
            (self.global_step, self.run_dir, self.metrics) == (other.global_step, other.run_dir, other.metrics))

    def __hash__(self) -> int:
        return hash(self.run_dir)
