"""build-data steps: run a dataset builder into the step directory and say which config keys its outputs feed.

- synthetic: `train/data.jsonl` (seed) and, with `eval_n`, a held-out `eval/data.jsonl` drawn with another seed
  (`eval_seed`, default seed + 1); wires `data.train` and `data.eval`.
- curriculum: the three Curr-ReFT stage files from `input` (default: the data.train wired by an earlier step);
  wires `stages.0.data`, `stages.1.data`, `stages.2.data`.
- any other registered builder (`mmrl build-data --help`): `argv` as on its command line, with `{out}` standing for
  the step directory, `{model}` for the latest sft/train checkpoint and `{step.output}` for an earlier step's output,
  and `outputs: {name: path}` naming what it writes; wires `train` / `eval` outputs like synthetic.
`args.wire: {config.key: output name}` replaces the default wiring.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmrl.config.workflow import PipelineStep
from mmrl.errors import UserError

SPLIT_WIRING = {"data.train": "train", "data.eval": "eval"}
CURRICULUM_WIRING = {"stages.0.data": "stage1_yes_no", "stages.1.data": "stage2_mc", "stages.2.data": "stage3_open"}


def known_builders() -> list[str]:
    from data_pipelines.registry import load_builders

    return [name for name, _ in load_builders().items()]


def _names(value: Any, field: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise UserError(f"{where}: args.{field} must be a list of names or a comma-separated string (got {value!r})")


def _int(args: dict[str, Any], field: str, default: int | None, where: str) -> int | None:
    value = args.get(field, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}: args.{field} must be an integer (got {value!r})")
    return value


def _synthetic(args: dict[str, Any], out: Path, where: str) -> dict[str, Path]:
    from data_pipelines.synthetic import FORMS, build_synthetic

    tasks = _names(args.get("tasks", "color"), "tasks", where)
    forms = _names(args.get("forms", list(FORMS)), "forms", where)
    difficulty = args.get("difficulty", 1)
    seed = _int(args, "seed", 0, where)
    common = {"forms": forms, "difficulty": difficulty, "image_size": _int(args, "image_size", 112, where),
              "with_cot": bool(args.get("with_cot", True))}
    outputs = {"train": build_synthetic(tasks, _int(args, "n", 1000, where), seed, out / "train", **common)}
    eval_n = _int(args, "eval_n", None, where)
    if eval_n:
        eval_seed = _int(args, "eval_seed", seed + 1, where)
        if eval_seed == seed:
            raise UserError(f"{where}: args.eval_seed must differ from args.seed so the eval set is held out")
        outputs["eval"] = build_synthetic(tasks, eval_n, eval_seed, out / "eval", **common)
    return outputs


def _curriculum(args: dict[str, Any], out: Path, where: str, wiring: dict[str, Any]) -> dict[str, Path]:
    from data_pipelines.curriculum import build_curriculum

    source = args.get("input")
    if source is None:
        train = wiring.get("data.train")
        if not train:
            raise UserError(f"{where}: args.input is missing and no earlier build-data step wired data.train; "
                            "give args.input: <dataset with open answers>")
        source = train[0]["path"]
    return build_curriculum(source, out, seed=_int(args, "seed", 0, where))


def _generic(name: str, builder: Any, args: dict[str, Any], out: Path, where: str, wiring: dict[str, Any],
             earlier: dict[str, dict[str, Any]]) -> dict[str, Path]:
    argv = args.get("argv")
    outputs = args.get("outputs")
    if not isinstance(argv, list) or not isinstance(outputs, dict) or not outputs:
        raise UserError(f"{where}: builder '{name}' runs from args.argv (its command-line arguments, '{{out}}' = the "
                        "step directory) and args.outputs ({{name: path}} of what it writes); give both")
    parser = argparse.ArgumentParser(prog=f"mmrl build-data {name}", add_help=False)
    builder.add_arguments(parser)
    words = [str(a).replace("{out}", str(out)) for a in argv]
    if any("{model}" in w for w in words):  # the latest sft/train step's checkpoint (rejection sampling)
        model = wiring.get("model.name_or_path")
        if not model:
            raise UserError(f"{where}: '{{model}}' in args.argv needs an earlier sft or train step")
        words = [w.replace("{model}", str(model)) for w in words]
    from mmrl.pipeline.plan import resolve_refs

    words = resolve_refs(words, earlier, where)
    try:
        namespace = parser.parse_args(words)
    except SystemExit:
        raise UserError(f"{where}: args.argv {argv} is not valid for builder '{name}'; see "
                        f"`mmrl build-data {name} --help`") from None
    out.mkdir(parents=True, exist_ok=True)
    builder.run(namespace)
    return {key: Path(str(path).replace("{out}", str(out))) for key, path in outputs.items()}


def run_build_data(step: PipelineStep, out: Path, wiring: dict[str, Any], where: str,
                   earlier: dict[str, dict[str, Any]] | None = None) -> tuple[dict, dict]:
    """Run the step's builder into `out`; return ({output name: path}, {config key: value for later steps})."""
    name = step.args["builder"]
    if name == "synthetic":
        outputs, default_wire = _synthetic(step.args, out, where), SPLIT_WIRING
    elif name == "curriculum":
        outputs, default_wire = _curriculum(step.args, out, where, wiring), CURRICULUM_WIRING
    else:
        from data_pipelines.registry import load_builders

        outputs = _generic(name, load_builders().get(name), step.args, out, where, wiring, earlier or {})
        default_wire = SPLIT_WIRING
    missing = [str(p) for p in outputs.values() if not Path(p).exists()]
    if missing:
        raise UserError(f"{where}: builder '{name}' did not write {missing}; check args.outputs")
    wire = step.args.get("wire") or {key: output for key, output in default_wire.items() if output in outputs}
    unknown = sorted(set(wire.values()) - set(outputs))
    if unknown:
        raise UserError(f"{where}: args.wire names outputs {unknown}; this step writes {sorted(outputs)}")
    resolved = {key: str(Path(path).resolve()) for key, path in outputs.items()}
    return resolved, {key: [{"path": resolved[output]}] for key, output in wire.items()}
