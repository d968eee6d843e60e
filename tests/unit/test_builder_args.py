"""One argument schema per builder: `mmrl build-data NAME ...` and a pipeline `build-data` step are checked by the
same code, so a typo or a wrong type gives the same one-line error (exit code 2, no traceback) from both, and the
same arguments build the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmrl.cli import main


def _pipeline(tmp_path: Path, args: dict) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny"}, "output_dir": str(tmp_path / "runs"),
                                    "pipeline": [{"name": "data", "kind": "build-data", "args": args}]}))
    return path


def _error(capsys, argv: list[str]) -> str:
    """The one line `mmrl` printed for a user error, after checking the exit code."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _after_builder(line: str) -> str:
    return line[line.index("builder '"):]


CASES = [
    # (builder, command-line words, the same in a pipeline step's args, the message both must give)
    ("synthetic", ["--nn", "5"], {"nn": 5}, "builder 'synthetic': unknown argument 'nn' (did you mean 'n'?); valid: "
     "tasks, n, eval_n, seed, eval_seed, out, forms, difficulty, image_size, no_cot"),
    ("synthetic", ["--n", "ten"], {"n": "ten"}, "builder 'synthetic': argument 'n' must be an integer (got 'ten')"),
    ("synthetic", ["--eval-sed", "3"], {"eval_sed": 3}, "unknown argument 'eval_sed' (did you mean 'eval_seed'?)"),
    # no silent abbreviation on the command line: a step's `eval` is no field either
    ("synthetic", ["--eval", "3"], {"eval": 3}, "unknown argument 'eval' (did you mean 'eval_n'?)"),
    ("curriculum", ["in.jsonl", "--seed", "1.5"], {"input": "in.jsonl", "seed": 1.5},
     "builder 'curriculum': argument 'seed' must be an integer (got '1.5')"),
    ("rejection", ["--model", "tiny", "--data", "d.jsonl", "--k", "many"],
     {"model": "tiny", "data": "d.jsonl", "k": "many"}, "builder 'rejection': argument 'k' must be an integer"),
    ("rejection", ["--model", "tiny", "--data", "d.jsonl", "--rule", "best"],
     {"model": "tiny", "data": "d.jsonl", "rule": "best"},
     "builder 'rejection': argument 'rule' must be one of openvlthinker, all-correct (got 'best')"),
    # Ranges are part of the schema: the same line from both, and a step's is caught when the pipeline loads.
    ("rejection", ["--model", "tiny", "--data", "d.jsonl", "--k", "0"], {"model": "tiny", "data": "d.jsonl", "k": 0},
     "builder 'rejection': argument 'k' must be an integer from 1 to 256 (got '0')"),
    ("rejection", ["--model", "tiny", "--data", "d.jsonl", "--max-new-tokens", "1000000000"],
     {"model": "tiny", "data": "d.jsonl", "max_new_tokens": 1000000000},
     "builder 'rejection': argument 'max_new_tokens' must be an integer from 1 to 32768 (got '1000000000')"),
    ("rejection", ["--model", "tiny", "--data", "d.jsonl", "--seed", "100000000000000000000000"],  # was a traceback
     {"model": "tiny", "data": "d.jsonl", "seed": 100000000000000000000000},
     "builder 'rejection': argument 'seed' must be an integer from 0 to 4294967295 (got '100000000000000000000000')"),
    ("rejection", ["--model", "tiny", "--data", "d.jsonl", "--temperature", "nan"],
     {"model": "tiny", "data": "d.jsonl", "temperature": "nan"},
     "builder 'rejection': argument 'temperature' must be a number from 0 to 10 (got 'nan')"),
    ("rejection", ["--model", "tiny", "--data", "d.jsonl", "--temprature", "0.5"],
     {"model": "tiny", "data": "d.jsonl", "temprature": 0.5},
     "unknown argument 'temprature' (did you mean 'temperature'?)"),
]


@pytest.mark.parametrize(("builder", "words", "fields", "message"), CASES)
def test_cli_and_pipeline_give_the_same_one_line_error(tmp_path, capsys, builder, words, fields, message):
    out = ["--out", str(tmp_path / "o")] if builder != "curriculum" else [str(tmp_path / "o")]
    cli = _error(capsys, ["build-data", builder, *words, *out])
    assert cli.startswith(f"mmrl build-data: error: builder '{builder}'")
    pipe = _error(capsys, ["pipeline", str(_pipeline(tmp_path, {"builder": builder, **fields}))])
    assert pipe.startswith(f"mmrl pipeline: error: {tmp_path / 'pipe.yaml'}: pipeline.0 ('data'): ")
    assert message in cli
    assert _after_builder(cli) == _after_builder(pipe)
    # the same step written as its command line (args.argv) is checked by the same schema too
    argv = _error(capsys, ["pipeline", str(_pipeline(tmp_path, {"builder": builder, "argv": words}))])
    assert _after_builder(argv) == _after_builder(cli)
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()  # checked before anything ran


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"no_cot": "yes"}, "argument 'no_cot' is a switch: true or false (got 'yes')"),
        ({"n": [1, 2]}, "argument 'n' must be an integer (got [1, 2])"),
        ({"n": True}, "argument 'n' must be an integer (got True)"),
        ({"tasks": {"color": 1}}, "argument 'tasks' must be a string"),
        ({"argv": ["--n", "2"], "n": 2}, "args.argv must be a list of command-line words, given instead"),
    ],
)
def test_pipeline_values_of_the_wrong_yaml_type(tmp_path, capsys, fields, message):
    err = _error(capsys, ["pipeline", str(_pipeline(tmp_path, {"builder": "synthetic", **fields}))])
    assert message in err


def test_a_reference_is_checked_once_resolved(tmp_path, capsys):
    # "{out}" cannot be checked as an integer at load time; once replaced by the step directory it is not one
    err = _error(capsys, ["pipeline", str(_pipeline(tmp_path, {"builder": "synthetic", "n": "{out}"}))])
    assert f"argument 'n' must be an integer (got '{tmp_path / 'runs' / 'data'}')" in err


def _records(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k != "images"} for row in rows]


def test_the_same_arguments_build_the_same_data(tmp_path, capsys):
    assert main(["build-data", "synthetic", "--tasks", "color,count", "--forms", "open", "--n", "6", "--eval-n", "3",
                 "--seed", "4", "--image-size", "56", "--no-cot", "--out", str(tmp_path / "cli")]) == 0
    fields = {"builder": "synthetic", "tasks": ["color", "count"], "forms": "open", "n": 6, "eval_n": 3, "seed": 4,
              "image_size": 56, "no_cot": True}
    assert main(["pipeline", str(_pipeline(tmp_path, fields))]) == 0
    step = tmp_path / "runs" / "data"
    done = json.loads((step / "DONE.json").read_text())
    assert done["outputs"] == {"train": str((step / "train.jsonl").resolve()),
                               "eval": str((step / "eval.jsonl").resolve())}
    for split in ("train", "eval"):
        cli, pipe = _records(tmp_path / "cli" / f"{split}.jsonl"), _records(step / f"{split}.jsonl")
        assert cli == pipe and len(cli) == (6 if split == "train" else 3)
    assert all("<think>" not in json.dumps(r) for r in cli)  # no_cot reached the builder


ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted(p for p in ROOT.glob("configs/**/*.yaml")
                   if isinstance(d := yaml.safe_load(p.read_text()), dict) and d.get("pipeline"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_pipeline_fits_its_builders_schemas(path):
    from mmrl.workflow import load_plan

    plan = load_plan(path)
    assert any(step.kind == "build-data" for step in plan.steps)


@pytest.mark.parametrize(("overrides", "message"), [
    ([], "nothere.yaml: no such config file"),
    (["stages.reason.max_new_tokens=0"], "stages.reason.max_new_tokens: Input should be greater than or equal to 1"),
])
def test_a_cold_start_step_is_checked_when_the_pipeline_loads(tmp_path, capsys, overrides, message):
    config = str(tmp_path / "nothere.yaml") if not overrides else str(ROOT / "configs/cold_start/offline.yaml")
    cli = _error(capsys, ["build-data", "cold-start", config, *overrides])
    pipe = _error(capsys, ["pipeline", str(_pipeline(tmp_path, {"builder": "cold-start", "config": config,
                                                                 "overrides": overrides}))])
    assert message in cli and cli.endswith(pipe[pipe.index("builder 'cold-start': ") + 22:])
    assert not (tmp_path / "runs").exists()  # before any step ran
