"""Run a pipeline: each step in order, skipping finished ones (their `DONE.json`), resuming an interrupted one.

A step is finished when `<output_dir>/<step>/DONE.json` exists (written last, atomically, with the step's outputs,
metrics and what it wires into later steps) and its outputs are still on disk. A step without it is run — sft/train
with `trainer.resume=auto`, so an interrupted one continues from its latest complete checkpoint — and once a step has
run, every later step that reads its outputs (a checkpoint, a data file, anything under its directory) runs again too,
since its inputs may have changed — a trained one from scratch, as resuming its final checkpoint would train nothing —
and so does one that finished before a step it reads (an invocation stopped in between); the others stay skipped. A
finished step whose settings changed since it ran is refused, naming it (its results are another config's); delete its
directory to re-run it from scratch.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmrl.config import MMRLConfig
from mmrl.config.added_fields import without_added_defaults
from mmrl.config.workflow import PipelineStep
from mmrl.errors import UserError
from mmrl.workflow.builders import builder_inputs, run_build_data
from mmrl.workflow.plan import (
    TRAINED_KINDS,
    Plan,
    config_digest,
    load_plan,
    same_settings,
    step_config,
    step_settings,
    without_sweep,
)
from mmrl.workflow.seeds import aggregate, plot_seeds, seed_overrides, seeds_table
from mmrl.workflow.steps import StepResult, run_eval, run_trained
from mmrl.workflow.summary import accuracy_table, build_summary, plot_accuracy, write_summary

DONE = "DONE.json"


def read_done(step_dir: Path) -> dict[str, Any] | None:
    path = step_dir / DONE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a damaged marker means "not finished": the step runs again


def _write_done(step_dir: Path, record: dict[str, Any]) -> None:
    step_dir.mkdir(parents=True, exist_ok=True)
    tmp = step_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, step_dir / DONE)


def _missing_outputs(record: dict[str, Any]) -> list[str]:
    paths = [v for v in record.get("outputs", {}).values() if isinstance(v, str) and os.path.isabs(v)]
    return [p for p in paths if not os.path.exists(p)]


def _model_wiring(plan: Plan, step: PipelineStep, wiring: dict[str, Any], trained: dict[str, str]) -> dict[str, Any]:
    """An eval step's model: `base`, an earlier sft/train step's final checkpoint, or (default) the latest one."""
    choice = step.args.get("model") if step.kind in ("eval", *TRAINED_KINDS) else None
    if choice is None:
        return wiring
    model = plan.base_model if choice == "base" else trained[choice]
    return {**wiring, "model.name_or_path": model}


def _execute(plan: Plan, step: PipelineStep, cfg, wiring: dict[str, Any], where: str,
             earlier: dict[str, dict[str, Any]]) -> StepResult:
    out = plan.step_dir(step)
    out.mkdir(parents=True, exist_ok=True)
    if step.kind == "build-data":
        outputs, wired = run_build_data(step, out, wiring, where, earlier)
        return StepResult(outputs=outputs, wiring=wired)
    if step.kind in TRAINED_KINDS:
        return run_trained(step, cfg, where)
    return run_eval(step, cfg, out, step.args.get("label", step.name), where)


def _paths_read(plan: Plan, step: PipelineStep, settings: dict[str, Any], wiring: dict[str, Any], where: str,
                earlier: dict[str, dict[str, Any]]) -> list[str] | None:
    """Every path-like string a step runs with, absolute: its `settings` (model, data, stages' data), or a build-data
    step's filled-in builder fields. None when they cannot be worked out (the step then counts as reading all)."""
    used: Any = settings
    if step.kind == "build-data":
        try:
            used = builder_inputs(step, plan.step_dir(step), wiring, where, earlier)
        except UserError:  # it fails when it runs, with this error; until then assume it reads everything
            return None
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and os.sep in value:
            found.extend(path_candidates(value))

    walk(used)
    return found


def path_candidates(value: str) -> list[str]:
    """The string, and each path inside it ("data=/runs/x/train.jsonl", an argv line), made absolute.

    >>> import os
    >>> [p == os.path.abspath(q) for p, q in zip(path_candidates("data=runs/d/train.jsonl"),
    ...                                          ["data=runs/d/train.jsonl", "runs/d/train.jsonl"])]
    [True, True]
    """
    parts = [value, *(part for part in re.split(r"[=\s,;]+", value) if part and part != value)]
    return [os.path.abspath(part) for part in dict.fromkeys(parts) if os.sep in part]


def _reads_from(paths: list[str] | None, places: dict[str, list[str]], finished: dict[str, int],
                since: int) -> str | None:
    """The first earlier step that finished after `since` (this step's own finish) whose directory or outputs
    (`places`) the step reads (`paths`; None: it may read anything), or None."""
    for name, where in places.items():
        if finished[name] <= since:
            continue
        if paths is None:
            return name
        for place in where:
            if any(p == place or p.startswith(place.rstrip(os.sep) + os.sep) for p in paths):
                return name
    return None


def _finished_ns(record: dict[str, Any]) -> int:
    """When a step finished (markers before `finished_ns` kept only seconds)."""
    if isinstance(record.get("finished_ns"), int):
        return record["finished_ns"]
    try:
        return int(datetime.fromisoformat(str(record.get("finished_at"))).timestamp() * 1e9)
    except ValueError:
        return 0


def _places(plan: Plan, step: PipelineStep, record: dict[str, Any]) -> list[str]:
    """What a later step reads of this one: its directory, and a build-data step's outputs (they may lie outside it;
    an eval's or a trained step's outputs name the model it started from, which is not theirs)."""
    places = [os.path.abspath(plan.step_dir(step))]
    if step.kind == "build-data":
        places += [os.path.abspath(v) for v in record.get("outputs", {}).values() if isinstance(v, str) and os.sep in v]
    return places


def _fresh(cfg):
    """A trained step that runs again because a step it reads changed: a fresh run in its directory (its finished
    checkpoints came from the old inputs; resuming the final one would train nothing)."""
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"overwrite": True, "resume": None})})


def _refuse_changed(plan: Plan, stale: list[tuple[PipelineStep, dict[str, Any], dict[str, Any]]]) -> None:
    """One line naming the finished steps whose settings changed (and the fields, where their DONE.json kept them):
    skipping them would print another config's results with exit 0, and re-running a finished trained step in place
    would resume its last checkpoint (nothing to train) or mix two configs in one run."""
    if not stale:
        return
    from mmrl.runs.segments import changed_fields

    parts = []
    for step, done, now in stale:
        before = done.get("settings")
        if isinstance(before, dict):  # a marker from before the sweep's keys were left out: they are not a change
            before = without_sweep(before)
        if isinstance(before, dict):  # a field added since the marker was written, at its default, is no change
            now = without_added_defaults(before, now, MMRLConfig, {"step": PipelineStep})
        fields = changed_fields(before, now) if before is not None else []
        parts.append(f"{step.name} ({', '.join(fields[:4]) + (' ...' if len(fields) > 4 else '')})" if fields
                     else step.name)
    dirs = " ".join(str(plan.step_dir(step)) for step, _, _ in stale)
    raise UserError(f"{plan.path}: {plan.root} holds finished steps run with other settings: {', '.join(parts)}; "
                    f"give these settings another output_dir, or delete those steps' directories ({dirs}) to re-run "
                    "them there")


def _brief(metrics: dict[str, Any]) -> str:
    keys = [k for k in ("accuracy", "n", "loss", "reward/total", "reward") if k in metrics]
    shown = ", ".join(f"{k}={metrics[k]:.3g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys)
    return f" ({shown})" if shown else ""


def run_pipeline(
    path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), echo: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the pipeline config at `path` (with dotted `overrides`); return the summary written to summary.json.

    >>> summary = run_pipeline("configs/quickstart.yaml", ["model.name_or_path=tiny"])  # doctest: +SKIP
    >>> sorted(summary["accuracy"])  # doctest: +SKIP
    ['base', 'grpo', 'sft']
    """
    say = echo or (lambda line: print(line, flush=True))
    started = time.perf_counter()
    plan = load_plan(path, overrides)
    from mmrl.runs.threads import announce_threads, configure_threads

    configure_threads(plan.config.trainer.num_threads)  # once for every step: the pipeline's first line
    announce_threads(say)
    if plan.config.seeds:
        return _run_seeds(plan, list(overrides), say, started)
    return _run_plan(plan, say, started)


def _run_seeds(plan: Plan, overrides: list[str], say: Callable[[str], None], started: float) -> dict[str, Any]:
    """`seeds:` set: the pipeline once per seed into <root>/seed-<seed>/, then the aggregate summary."""
    seeds = plan.config.seeds
    say(f"pipeline {plan.config.name}: seeds {seeds}, each into {plan.root}/seed-<seed>/")
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        say(f"== seed {seed}")
        try:
            one = load_plan(plan.path, seed_overrides(overrides, plan.root, seed))
            per_seed[seed] = {**_run_plan(one, say, time.perf_counter()), "path": str(one.root / "summary.json")}
        except UserError as err:  # the one error line says which seed stopped and what the aggregate holds
            kept = (f"; {plan.root / 'summary.json'} aggregates the finished seeds {list(per_seed)}" if per_seed
                    else "")
            err.args = (f"seed {seed} of {seeds}: {err}{kept}; fix it and re-run: finished steps are skipped",)
            raise
        # after every seed: a sweep stopped part-way still leaves the aggregate of the seeds it finished
        summary = {**aggregate(per_seed, time.perf_counter() - started, plan.config.claims), "seeds_planned": seeds}
        written = write_summary(plan.root, summary)
        plot = plot_seeds(summary, plan.root / "summary.png")
        if plot is None:
            (plan.root / "summary.png").unlink(missing_ok=True)  # an earlier sweep's plot is not this summary's
    for line in seeds_table(summary).splitlines():
        say(line)
    if summary.get("claims"):
        from mmrl.workflow.claims import claims_table

        for line in claims_table(summary["claims"]).splitlines():
            say(line)
    if plot is not None:
        say(f"plot: {plot}")
    say(f"summary over seeds {seeds}: {written}")
    return summary


def _run_plan(plan: Plan, say: Callable[[str], None], started: float) -> dict[str, Any]:
    wiring: dict[str, Any] = {}
    trained: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    statuses: dict[str, str] = {}
    # finished steps whose settings changed since they ran: their results are another config's, never shown as this
    # one's; refused before anything runs (see _refuse_changed)
    stale: list[tuple[PipelineStep, dict[str, Any], dict[str, Any]]] = []
    # every earlier step -> what later steps read of it, and when it finished: a step reading one that finished after
    # it runs again (in this invocation or an interrupted earlier one), one reading none of them is still skipped
    places: dict[str, list[str]] = {}
    finished: dict[str, int] = {}
    total = len(plan.steps)
    say(f"pipeline {plan.config.name}: {total} steps in {plan.root}")
    for index, step in enumerate(plan.steps, 1):
        head = f"step {index}/{total} {step.name}" + ("" if step.name == step.kind else f" [{step.kind}]")
        where = f"{plan.path}: pipeline step '{step.name}'"
        step_wiring = _model_wiring(plan, step, wiring, trained)
        earlier = {r["name"]: r.get("outputs", {}) for r in records}
        cfg = step_config(plan, step, step_wiring, earlier)
        now = step_settings(cfg, step)
        digest = config_digest(cfg, step)
        done = read_done(plan.step_dir(step))
        record = None
        upstream = None
        if done is not None:
            upstream = _reads_from(_paths_read(plan, step, now, wiring, where, earlier), places, finished,
                                   _finished_ns(done))
        if done is not None and upstream is None:
            missing = _missing_outputs(done)
            if not missing:
                if not same_settings(done, digest, now):
                    stale.append((step, done, now))
                else:
                    say(f"{head}: skipped (done)")
                record, statuses[step.name] = done, "skipped"
            else:
                say(f"{head}: running again (its output {missing[0]} is missing)")
        elif done is not None:
            fresh = " from scratch" if step.kind in TRAINED_KINDS else ""
            say(f"{head}: running again{fresh} (it reads {upstream}, which ran after it)")
        else:
            say(f"{head}: running")
        if record is None:
            _refuse_changed(plan, stale)  # before this step runs: every changed step so far is named at once
            began = time.perf_counter()
            # its old marker stays until the new one replaces it: stopped part-way, the next invocation still sees it
            # older than what it reads and starts it over (unmarked, it would resume the old run's checkpoints)
            run_cfg = _fresh(cfg) if upstream is not None and step.kind in TRAINED_KINDS else cfg
            result = _execute(plan, step, run_cfg, wiring, where, earlier)
            seconds = time.perf_counter() - began
            record = {"name": step.name, "kind": step.kind, "outputs": result.outputs, "metrics": result.metrics,
                      "wiring": result.wiring, "seconds": round(seconds, 3), "config_digest": digest,
                      "settings": now,
                      "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "finished_ns": time.time_ns()}
            _write_done(plan.step_dir(step), record)  # last: the marker means every output above is complete
            statuses[step.name] = "ran"
            say(f"{head}: done in {seconds:.1f}s{_brief(result.metrics)}")
            for note in result.notes:
                say(f"  {note}")
        places[step.name], finished[step.name] = _places(plan, step, record), _finished_ns(record)
        wiring.update(record.get("wiring", {}))
        if step.kind in TRAINED_KINDS:
            trained[step.name] = record["outputs"]["checkpoint"]
        records.append(record)
    _refuse_changed(plan, stale)
    summary = build_summary(records, statuses, time.perf_counter() - started)
    path_written = write_summary(plan.root, summary)
    if summary["accuracy"]:
        for line in accuracy_table(summary).splitlines():
            say(line)
        plot = plot_accuracy(summary, plan.root / "accuracy.png")
        if plot is not None:
            say(f"accuracy plot: {plot}")
    say(f"summary: {path_written}")
    return summary
