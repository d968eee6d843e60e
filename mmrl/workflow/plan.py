"""A pipeline's plan: the raw config, its checked steps, and each step's own config (wiring + step overrides).

A step's config is built from the *raw* merged mapping (YAML chain + command-line overrides), not from the validated
pipeline config, so values derived at validation time (warm-up steps from trainer.max_steps, ...) are derived again
from the step's own values.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.config import MMRLConfig
from mmrl.config.added_fields import without_added_defaults
from mmrl.config.loader import _set_dotted, load_raw
from mmrl.config.workflow import PipelineStep
from mmrl.errors import UserError
from mmrl.preflight import build_config
from mmrl.workflow.refs import resolve_refs

# args each step kind accepts (build-data: the builder's own schema, see mmrl.workflow.builders).
EVAL_ARGS = {"model", "label"}
TRAINED_ARGS = {"model"}  # `model: base` starts an sft/train step from the base (OpenVLThinker's SFT each iteration)
TRAINED_KINDS = ("sft", "train")


@dataclass
class Plan:
    """What `mmrl pipeline` runs: the validated pipeline config, its raw mapping (for step configs) and its root."""

    path: str
    config: MMRLConfig
    raw: dict[str, Any]
    sources: dict[str, str]
    root: Path

    @property
    def steps(self) -> list[PipelineStep]:
        return self.config.pipeline

    @property
    def base_model(self) -> str:
        """The pipeline's initial model (after command-line overrides): what `{model: base}` evaluates."""
        return self.config.model.name_or_path

    def step_dir(self, step: PipelineStep) -> Path:
        return self.root / step.name


def load_plan(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Load and check a pipeline config: steps present, names unique, args known, eval models defined earlier."""
    raw, sources = load_raw(path, overrides)
    config = build_config(copy.deepcopy(raw), sources, default_source=str(path))
    if not config.pipeline:
        raise UserError(f"{path}: no `pipeline:` steps; add a list of steps (build-data, sft, train, eval) or run "
                        f"`mmrl train {path}` for a single GRPO run")
    _check_steps(str(path), config.pipeline)
    if config.claims:
        from mmrl.workflow.claims import check_claims

        check_claims(config.claims, config.pipeline, str(path))
    root = Path(config.output_dir or Path("runs") / (config.name or Path(path).stem))
    plan = Plan(str(path), config, raw, sources, root)
    _refuse_command_line_trainer_output_dir(plan)
    if config.seeds:  # here, so that `--plan` refuses what a run would refuse
        check_seeds(sources.get("seeds", plan.path), config.seeds)  # where the list was written: file or command line
        check_seed_overrides(plan)
    for step in plan.steps:  # a step's own overrides are checked now, not after the steps before it ran
        step_config(plan, step, {})
    return plan


def given_on_command_line(plan: Plan, section: str, key: str) -> bool:
    """Whether `section.key` came from the command line, as `section.key=V` or inside `section={key: V}`."""
    from mmrl.config.loader import COMMAND_LINE

    whole = plan.raw.get(section)
    return plan.sources.get(f"{section}.{key}") == COMMAND_LINE or (
        plan.sources.get(section) == COMMAND_LINE and isinstance(whole, dict) and key in whole)


def _refuse_command_line_trainer_output_dir(plan: Plan) -> None:
    """`mmrl pipeline CONFIG trainer.output_dir=DIR` was silently ignored: every step runs in <output_dir>/<step>/
    (the step's automatic trainer.output_dir wins over the pipeline's), so the run went to the YAML's output_dir,
    maybe on top of another run's finished steps."""
    from mmrl.config.loader import COMMAND_LINE

    if given_on_command_line(plan, "trainer", "output_dir"):
        value = plan.config.trainer.output_dir
        raise UserError(f"{COMMAND_LINE}: trainer.output_dir={value} is not read by `mmrl pipeline` (each step runs "
                        f"in <output_dir>/<step name>/, here {plan.root}/<step name>/); set output_dir={value} "
                        "instead")


def _check_steps(path: str, steps: list[PipelineStep]) -> None:
    seen: dict[str, PipelineStep] = {}
    labels: dict[str, str] = {}
    for i, step in enumerate(steps):
        where = f"{path}: pipeline.{i} ('{step.name}')"
        if step.name in seen:
            raise UserError(f"{where}: duplicate step name; each step needs its own name (it names its directory)")
        if step.kind == "build-data":
            _check_build_data(where, step)
        else:
            allowed = _allowed_args(step)
            unknown = sorted(set(step.args) - allowed)
            if unknown:
                raise UserError(f"{where}: unknown args {unknown} for a {step.kind} step; valid: "
                                f"{sorted(allowed) or 'none'}")
        wire = step.args.get("wire")
        if wire is not None and (not isinstance(wire, dict) or not all(isinstance(v, str) for v in wire.values())):
            raise UserError(f"{where}: args.wire must map config keys to output names, e.g. {{data.train: train}}")
        model = step.args.get("model") if step.kind in ("eval", *TRAINED_KINDS) else None
        if model is not None and model != "base":
            ref = seen.get(model)
            if ref is None or ref.kind not in TRAINED_KINDS:
                names = [s.name for s in seen.values() if s.kind in TRAINED_KINDS]
                raise UserError(f"{where}: args.model '{model}' is not an earlier sft/train step; use 'base' or one "
                                f"of {names}")
        if step.kind == "eval":
            label = step.args.get("label", step.name)
            if label in labels:
                raise UserError(f"{where}: eval label '{label}' is used by step '{labels[label]}' too; labels key "
                                "summary.json, so give each eval step its own args.label")
            labels[label] = step.name
        seen[step.name] = step


# -- seeds: a sweep refuses what it would silently replace -------------------------------------------------------
def check_seeds(path: str, seeds: list[int]) -> None:
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        raise UserError(f"{path}: seeds {duplicates} are listed twice; each seed runs once into seed-<seed>/, so "
                        "list each seed once")
    if any(s < 0 for s in seeds):
        raise UserError(f"{path}: seeds must be >= 0 (got {seeds})")


def _sets_seed(overrides: dict[str, Any], key: str = "trainer.seed") -> bool:
    section, field = key.split(".")
    return key in overrides or (isinstance(overrides.get(section), dict) and field in overrides[section])


def check_seed_overrides(plan: Plan) -> None:
    """Refuse a trainer.seed that the sweep would silently replace: one given on the command line (every seed's run
    sets trainer.seed=<seed>, last) or one in a step's overrides (that step would train with the same seed on every
    seed of the list, and the spread in summary.json would not be the training's)."""
    from mmrl.config.loader import COMMAND_LINE

    seeds = plan.config.seeds

    if given_on_command_line(plan, "trainer", "seed"):
        value = plan.config.trainer.seed
        raise UserError(f"{COMMAND_LINE}: trainer.seed={value} would be replaced by each seed of `seeds: {seeds}` "
                        f"(each seed's run sets trainer.seed=<seed>); drop it, or run `seeds=[{value}]` for that "
                        f"seed alone")
    for i, step in enumerate(plan.steps):
        if _sets_seed(step.overrides):
            raise UserError(f"{plan.path}: pipeline.{i} ('{step.name}') overrides trainer.seed, so that step would "
                            f"run with one seed on every seed of `seeds: {seeds}`; remove that override (the sweep "
                            "sets trainer.seed) or set seeds=[] for a single run")
        if _sets_seed(step.overrides, "trainer.output_dir"):  # every seed's run would share (and resume) one dir
            raise UserError(f"{plan.path}: pipeline.{i} ('{step.name}') overrides trainer.output_dir, so every seed "
                            f"of `seeds: {seeds}` would write that step into the same directory (a later seed "
                            "resuming the earlier one's finished run); remove that override (each step runs in "
                            "<output_dir>/seed-<seed>/<step>/) or set seeds=[] for a single run")


def _allowed_args(step: PipelineStep) -> set[str]:
    if step.kind == "eval":
        return EVAL_ARGS
    if step.kind in TRAINED_KINDS:
        return TRAINED_ARGS
    return set()


def _check_build_data(where: str, step: PipelineStep) -> None:
    """The builder exists and the step's args fit its schema (the one `mmrl build-data BUILDER` checks too)."""
    from mmrl.workflow.builders import check_step_args, known_builders

    builder = step.args.get("builder")
    if builder is None:
        raise UserError(f"{where}: a build-data step needs args.builder (e.g. synthetic or curriculum)")
    names = known_builders()
    if builder not in names:
        raise UserError(f"{where}: unknown builder '{builder}'; known builders: {', '.join(names)}")
    check_step_args(step.args, where)


def step_config(plan: Plan, step: PipelineStep, wiring: dict[str, Any],
                outputs: dict[str, dict[str, Any]] | None = None) -> MMRLConfig:
    """The config one step runs with: pipeline config <- wiring from earlier steps <- the step's own overrides
    (their "{step.output}" references resolved from `outputs`, the earlier steps' outputs)."""
    data = copy.deepcopy(plan.raw)
    data["pipeline"] = []  # a step is one run, not a pipeline
    sources = dict(plan.sources)
    automatic: dict[str, Any] = {**wiring, "trainer.output_dir": str(plan.step_dir(step))}
    if step.kind in TRAINED_KINDS:
        automatic["trainer.resume"] = "auto"  # an interrupted step continues from its latest complete checkpoint
    where = f"{plan.path}: pipeline step '{step.name}'"
    for key, value in automatic.items():
        _check_list_index(data, key, f"{where} (wired from an earlier step)")
        _set_dotted(data, key.split("."), copy.deepcopy(value))
    for key, value in step.overrides.items():
        _check_list_index(data, key, f"{where} overrides")
        _set_dotted(data, str(key).split("."), resolve_refs(copy.deepcopy(value), outputs, f"{where} overrides",
                                                               {s.name for s in plan.steps}))
        sources[str(key)] = f"{where} overrides"
    return build_config(data, sources, default_source=where)


def _check_list_index(data: dict[str, Any], key: str, where: str) -> None:
    """A clearer message than the loader's for `stages.2.data` when the config has fewer stages."""
    parts = str(key).split(".")
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                listed = ".".join(parts[:i])
                raise UserError(f"{where}: '{key}' needs item {part} of '{listed}', which has {len(node)} item(s); "
                                "add it to the config or change the wiring (args.wire)")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return


# Read only by the sweep around the steps (which seeds run, what summary.json compares): a claim added after a run,
# or one more seed, must not turn every finished training step into "run with other settings"
SWEEP_ONLY = ("claims", "seeds")


def step_settings(config: MMRLConfig, step: PipelineStep) -> dict[str, Any]:
    """What a step would run: the config sections it reads and the step itself (kept in its DONE.json, so a re-run
    with other settings can name what changed)."""
    full = config.model_dump(mode="json")
    if step.kind == "build-data":
        used: dict[str, Any] = {}
    elif step.kind == "eval":
        used = {key: full[key] for key in ("model", "data", "eval")}
    else:
        used = {key: value for key, value in full.items() if key not in ("eval", "pipeline", *SWEEP_ONLY)}
    return json.loads(json.dumps({**used, "step": step.model_dump(mode="json")}, default=str))


def same_settings(done: dict[str, Any], digest: str, now: dict[str, Any] | None = None) -> bool:
    """Whether a finished step (its DONE.json) ran with the settings it would run with now (`digest` of `now`, its
    `step_settings`). A marker written before SWEEP_ONLY was left out, or before this mmrl added a config field (at
    its default now), is fingerprinted again from the settings it kept: by their JSON text, so `false` and `0` stay
    different (a dict `==` took them for one)."""
    if done.get("config_digest") == digest:
        return True
    kept = done.get("settings")
    if not (isinstance(kept, dict) and isinstance(kept.get("step"), dict)):
        return False
    if now is None:  # only the sweep's keys can be forgiven
        return any(k in kept for k in SWEEP_ONLY) and _digest(without_sweep(kept)) == digest
    kept = without_sweep(kept)
    return _digest(kept) == _digest(without_added_defaults(kept, now, MMRLConfig, {"step": PipelineStep}))


def without_sweep(settings: dict[str, Any]) -> dict[str, Any]:
    """A finished step's kept settings without the sweep's keys (markers written before they were left out)."""
    return {k: v for k, v in settings.items() if k not in SWEEP_ONLY}


def config_digest(config: MMRLConfig, step: PipelineStep) -> str:
    """A short fingerprint of `step_settings`, to tell when a finished step's settings changed since it ran."""
    return _digest(step_settings(config, step))


def _digest(used: dict[str, Any]) -> str:
    text = json.dumps([{k: v for k, v in used.items() if k != "step"}, used["step"]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
