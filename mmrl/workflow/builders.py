"""build-data steps: run a registered dataset builder into the step directory and say which config keys its outputs
feed.

A step's `args` are `builder`, the builder's own fields (the names `mmrl build-data BUILDER --help` lists, with `-`
as `_`: `--eval-n` is `eval_n`; a switch such as `--no-cot` is `no_cot: true`; a list stands for a comma-separated
value), and optionally `wire` and `outputs`. They are checked by the same schema as the command line
(`data_pipelines.builder_args.check_args`), so a typo gives the same message from both. Instead of fields, `argv`
may give the builder's command line as a list of words.

In a field's value, `{out}` stands for the step directory, `{model}` for the latest sft/train checkpoint and
`{step.output}` for an earlier step's output. An output-directory field (`out`, `out_dir`, ...) that is not given is
the step directory; curriculum's `input`, when not given, is the `data.train` an earlier step wired.

Outputs: synthetic writes `train` (and `eval` with `eval_n`) and wires `data.train` / `data.eval`; curriculum writes
the three stage files and wires `stages.0.data`..`stages.2.data`; a builder that does not declare its outputs needs
`outputs: {name: path}` and wires `train` / `eval` like synthetic. `wire: {config.key: output name}` replaces the
default wiring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrl.config.workflow import PipelineStep
from mmrl.errors import UserError

SPLIT_WIRING = {"data.train": "train", "data.eval": "eval"}
CURRICULUM_WIRING = {"stages.0.data": "stage1_yes_no", "stages.1.data": "stage2_mc", "stages.2.data": "stage3_open"}
DEFAULT_WIRING = {"curriculum": CURRICULUM_WIRING}
STEP_ARGS = ("builder", "wire", "outputs", "argv")  # a build-data step's own args; the rest are the builder's fields


def known_builders() -> list[str]:
    from data_pipelines.registry import load_builders

    return [name for name, _ in load_builders().items()]


def builder_fields(args: dict[str, Any], where: str) -> dict[str, Any]:
    """The builder's raw fields of a step's `args` (from `argv` when given), unchecked."""
    from data_pipelines.builder_args import argv_to_raw
    from data_pipelines.registry import load_builders

    name = args["builder"]
    given = {k: v for k, v in args.items() if k not in STEP_ARGS}
    argv = args.get("argv")
    if argv is None:
        return given
    if given or not isinstance(argv, list):
        raise UserError(f"{where}: args.argv must be a list of command-line words, given instead of the builder's "
                        f"fields (not with them: {sorted(given)})")
    return argv_to_raw(name, load_builders().get(name).add_arguments, [str(a) for a in argv], where)


def check_step_args(args: dict[str, Any], where: str) -> None:
    """At load time: unknown fields and wrong types (values that still hold a `{...}` reference are checked when the
    step runs, once the reference is resolved)."""
    from data_pipelines.builder_args import check_args
    from data_pipelines.registry import load_builders

    name = args["builder"]
    given = builder_fields(args, where)
    raw = {k: v for k, v in given.items() if "{" not in str(v)}
    builder = load_builders().get(name)
    namespace = check_args(name, builder.add_arguments, raw, where, require=False)
    if builder.check is not None and len(raw) == len(given):  # a field still holding a reference: checked at run
        try:
            builder.check(namespace)
        except UserError as err:
            raise UserError(f"{where}: builder '{name}': {err}") from None
    outputs = args.get("outputs")
    if outputs is not None and (not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values())):
        raise UserError(f"{where}: args.outputs must map output names to paths, e.g. {{train: '{{out}}/train.jsonl'}}")


def _filled(value: Any, out: Path, wiring: dict[str, Any], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _filled(v, out, wiring, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, out, wiring, where) for v in value]
    if not isinstance(value, str):
        return value
    value = value.replace("{out}", str(out))
    if "{model}" in value:  # the latest sft/train step's checkpoint (rejection sampling)
        model = wiring.get("model.name_or_path")
        if not model:
            raise UserError(f"{where}: '{{model}}' in args needs an earlier sft or train step")
        value = value.replace("{model}", str(model))
    return value


def builder_inputs(step: PipelineStep, out: Path, wiring: dict[str, Any], where: str,
                   earlier: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The builder's fields as the step runs it: `{out}`, `{model}` and `{step.output}` filled in, and curriculum's
    `input` (when not given) from the `data.train` an earlier step wired. What the pipeline also reads to tell which
    earlier steps a build-data step depends on."""
    from data_pipelines.builder_args import fields, schema_parser
    from data_pipelines.registry import load_builders
    from mmrl.workflow.refs import resolve_refs

    name = step.args["builder"]
    raw = resolve_refs(_filled(builder_fields(step.args, where), out, wiring, where), earlier or {}, where)
    reads_wired_input = name == "curriculum" and "input" not in raw
    if reads_wired_input and "input" in fields(schema_parser(load_builders().get(name).add_arguments)):
        train = wiring.get("data.train")
        if not train:
            raise UserError(f"{where}: args.input is missing and no earlier build-data step wired data.train; "
                            "give args.input: <dataset with open answers>")
        raw["input"] = train[0]["path"]
    return raw


def run_build_data(step: PipelineStep, out: Path, wiring: dict[str, Any], where: str,
                   earlier: dict[str, dict[str, Any]] | None = None) -> tuple[dict, dict]:
    """Run the step's builder into `out`; return ({output name: path}, {config key: value for later steps})."""
    from data_pipelines.builder_args import check_args, fields, schema_parser
    from data_pipelines.registry import OUTPUT_FIELDS, load_builders

    name = step.args["builder"]
    builder = load_builders().get(name)
    raw = builder_inputs(step, out, wiring, where, earlier)
    declared = fields(schema_parser(builder.add_arguments))
    for field in OUTPUT_FIELDS:
        if field in declared and field not in raw:
            raw[field] = str(out)
    namespace = check_args(name, builder.add_arguments, raw, where)
    if step.args.get("outputs"):  # what the step says the builder writes wins over what the builder declares
        outputs = {key: Path(_filled(path, out, wiring, where)) for key, path in step.args["outputs"].items()}
    elif builder.outputs is not None:
        outputs = builder.outputs(namespace)
    else:
        raise UserError(f"{where}: builder '{name}' does not say what it writes; give args.outputs ({{name: path}}, "
                        "'{out}' = the step directory)")
    out.mkdir(parents=True, exist_ok=True)
    builder.run(namespace)
    missing = [str(p) for p in outputs.values() if not Path(p).exists()]
    if missing:
        raise UserError(f"{where}: builder '{name}' did not write {missing}; check args.outputs")
    default_wire = DEFAULT_WIRING.get(name, SPLIT_WIRING)
    wire = step.args.get("wire") or {key: output for key, output in default_wire.items() if output in outputs}
    unknown = sorted(set(wire.values()) - set(outputs))
    if unknown:
        raise UserError(f"{where}: args.wire names outputs {unknown}; this step writes {sorted(outputs)}")
    resolved = {key: str(Path(path).resolve()) for key, path in outputs.items()}
    return resolved, {key: [{"path": resolved[output]}] for key, output in wire.items()}
