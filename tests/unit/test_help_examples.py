"""Every `--help` example names paths that exist after the README's quickstart (`mmrl pipeline
configs/quickstart.yaml`, run in a fresh clone), and `mmrl train --help` points to the settings.

The examples are collected from every command's and subcommand's `--help`, parsed by mmrl's own parser, and each
path they read is checked in a directory laid out as the quickstart leaves it: the repository's configs and the
quickstart's outputs, derived from its plan (step directories, the trained steps' kept checkpoints, the data step's
files). Paths an example writes (an `--out`, an `output_dir=`) are not checked; a name in capitals (`EVAL.jsonl`,
`COMPLETIONS.jsonl`) is a placeholder the reader fills in.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from mmrl.cli import _parse, build_parser

ROOT = Path(__file__).resolve().parents[2]
# Arguments and override keys an example writes to: created by the command, not read.
OUTPUT_DESTS = {"out", "out_dir", "output", "output_dir"}
OUTPUT_KEYS = {"out", "output_dir", "trainer.output_dir"}
# Model hub ids: read from the hub (not a path; a fresh clone offline cannot check them).
HUB_IDS = {"Qwen/Qwen2.5-VL-3B-Instruct"}
PATH_SUFFIXES = (".yaml", ".yml", ".jsonl", ".json", ".parquet", ".py", ".png")


def _parsers(parser: argparse.ArgumentParser, name: str = "mmrl"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def help_examples() -> list[tuple[str, str]]:
    """(command whose --help shows it, example line) for every `mmrl ...` example line of every --help."""
    found = []
    for name, parser in _parsers(PARSER):
        text = (parser.epilog or "").replace("\\\n", " ")  # a line continued with a backslash is one command
        for line in text.splitlines():
            line = " ".join(line.split())
            if line.startswith("mmrl ") or (line.startswith("accelerate launch") and "-m mmrl " in line):
                found.append((name, line))
    return found


def _argv(line: str) -> list[str]:
    tokens = shlex.split(line.split(" | ")[0], comments=True)  # `mmrl ... | grep ...`: the mmrl part
    return tokens[tokens.index("mmrl") + 1 :] if tokens[0] == "accelerate" else tokens[1:]


def _is_path(value: str) -> bool:
    return ("/" in value or value.endswith(PATH_SUFFIXES)) and not value.startswith(("http://", "https://", "{"))


def _placeholder(value: str) -> bool:
    """`YOUR_DATA.parquet`, `REC_RUN/checkpoints/step-200`: a part in capitals is the reader's own."""
    return any(re.fullmatch(r"[A-Z][A-Z0-9_]*", part.split(".")[0]) for part in Path(value).parts)


def read_paths(argv: list[str]) -> list[str]:
    """The paths an example reads, from the namespace mmrl's parser gives it (overrides by key)."""
    args = _parse(PARSER, argv)
    values: list[str] = []
    for dest, value in vars(args).items():
        if dest in OUTPUT_DESTS or dest in ("func", "command"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str):
                continue
            if dest == "overrides" and "=" in item:
                key, item = item.split("=", 1)
                if key in OUTPUT_KEYS:
                    continue
            values.append(item.split(":")[0] if ".py:" in item else item)  # a reward file's `file.py:function`
    return [v for v in values if _is_path(v) and v not in HUB_IDS and not _placeholder(v)] + _config_data(args)


def _config_data(args: argparse.Namespace) -> list[str]:
    """The datasets a train / sft / eval / data check example's config reads (its YAML's or its overrides')."""
    config = getattr(args, "config", None)
    if not (isinstance(config, str) and config.endswith(".yaml")) or args.command not in (
        "train",
        "sft",
        "eval",
        "data",
        "build-data",
    ):
        return []
    if args.command == "build-data":  # cold-start's own config: a top-level `data:` file
        import yaml

        given = dict(item.split("=", 1) for item in args.overrides if "=" in item)
        data = given.get("data", (yaml.safe_load(Path(config).read_text()) or {}).get("data"))
        return [data] if isinstance(data, str) and not _placeholder(data) else []
    from mmrl.config import load_config

    cfg = load_config(config, getattr(args, "overrides", None) or [])
    specs = {
        "train": cfg.data.train,
        "sft": cfg.data.train,
        "eval": [] if getattr(args, "data", None) else cfg.data.eval,
        "data": [*cfg.data.train, *cfg.data.eval],
    }[args.command]
    if not specs and not getattr(args, "data", None):  # the command would stop: "no datasets" / "data.eval is empty"
        return [f"<the datasets of {config}: none>"]
    return [spec.path for spec in specs if not _placeholder(spec.path)]


@pytest.fixture(scope="module")
def after_quickstart(tmp_path_factory) -> Path:
    """A directory as a fresh clone holds it after `mmrl pipeline configs/quickstart.yaml`."""
    from mmrl.config.loader import to_yaml
    from mmrl.workflow.plan import TRAINED_KINDS, load_plan, step_config

    where = tmp_path_factory.mktemp("clone")
    for name in ("configs", "README.md"):
        (where / name).symlink_to(ROOT / name)
    plan = load_plan(ROOT / "configs" / "quickstart.yaml")
    root = where / plan.root
    root.mkdir(parents=True)
    (root / "summary.json").write_text("{}")
    (root / "accuracy.png").write_bytes(b"")
    for step in plan.steps:
        step_dir = root / step.name
        step_dir.mkdir()
        if step.kind == "build-data":
            for split in ("train", "eval"):
                (step_dir / f"{split}.jsonl").write_text("{}\n")
        elif step.kind == "eval":
            (step_dir / "report.json").write_text("{}")
        elif step.kind in TRAINED_KINDS:
            # the run's config.yaml as the pipeline writes it: the data step's files wired in, as absolute paths
            data = root / plan.steps[0].name
            cfg = step_config(
                plan, step, {"data.train": [str(data / "train.jsonl")], "data.eval": [str(data / "eval.jsonl")]}
            )
            total = sum(s.steps for s in cfg.stages) if cfg.stages else cfg.trainer.max_steps
            every = cfg.trainer.save_steps
            saved = [*(range(every, total, every) if every else []), total][-cfg.trainer.keep_last :]
            for number in saved:
                (step_dir / "checkpoints" / f"step-{number}").mkdir(parents=True)
            (step_dir / "metrics.jsonl").write_text("")
            (step_dir / "config.yaml").write_text(to_yaml(cfg))
            every = cfg.trainer.sample_steps
            for number in range(every, total + 1, every) if every else []:
                (step_dir / "samples").mkdir(exist_ok=True)
                (step_dir / "samples" / f"step-{number}.jsonl").write_text("{}\n")
    return where


PARSER = build_parser()
EXAMPLES = help_examples()


def test_every_command_shows_examples():
    shown = {name.split()[1] for name, _ in EXAMPLES if len(name.split()) > 1}
    assert shown >= {
        "train",
        "sft",
        "eval",
        "pipeline",
        "data",
        "build-data",
        "reward",
        "config",
        "model",
        "export",
        "demo",
        "plot",
        "serve",
    }


@pytest.mark.parametrize(("command", "line"), EXAMPLES, ids=[f"{c}: {line[:60]}" for c, line in EXAMPLES])
def test_help_example_reads_only_paths_the_quickstart_leaves(command, line, after_quickstart, monkeypatch):
    monkeypatch.chdir(after_quickstart)  # as the reader runs them: from the clone's root
    missing = [p for p in read_paths(_argv(line)) if not (after_quickstart / p).exists()]
    assert not missing, f"`{command} --help` example `{line}` names {missing}, which the quickstart does not leave"


def test_train_help_points_to_the_settings():
    from io import StringIO

    for name, parser in _parsers(PARSER):
        if name in ("mmrl train", "mmrl sft"):
            text = StringIO()
            parser.print_help(text)
            assert "mmrl config show --doc" in text.getvalue(), name


# Folders a reader already holds after the README's Usage block (`--out data/synth`) and `mmrl build-data recipes`:
# a builder refuses a folder that holds data, so an example writing there fails when pasted after them.
README_AND_RECIPES_DATA = {"data/synth", "data/gui", "data/boxes", "data/curriculum"}


def test_help_examples_write_beside_the_readme_and_recipes_data():
    clashes = []
    for command, line in EXAMPLES:
        argv = _argv(line)
        if argv[:1] != ["build-data"]:
            continue
        args = _parse(PARSER, argv)
        out = getattr(args, "out", None) or getattr(args, "out_dir", None)  # synthetic, rejection / curriculum
        if out in README_AND_RECIPES_DATA:
            clashes.append(f"`{command} --help`: {line}")
    assert not clashes, clashes


# Run directories the README's Usage block trains into: a run directory that holds a run is refused (unless resumed),
# so a fresh-start example training there fails when pasted after the README.
README_RUNS = {"runs/grpo_tiny", "runs/grpo_tiny_ddp"}


def test_help_examples_train_beside_the_readme_runs():
    from mmrl.config import load_config

    clashes = []
    for command, line in EXAMPLES:
        argv = _argv(line)
        if argv[0] not in ("train", "sft"):
            continue
        args = _parse(PARSER, argv)
        cfg = load_config(args.config, args.overrides)
        out = cfg.trainer.output_dir or f"runs/{cfg.name}"
        if out in README_RUNS:
            clashes.append(f"`{command} --help`: {line} (writes {out})")
    assert not clashes, clashes
