"""The four ablations of configs/repro/ run end to end on the tiny model, each step cut to one training step and a
handful of items by command-line overrides (derived from the config itself, so a new arm is covered too): the
aggregate summary.json has every arm and seed and every claim of the config with its difference and verdict, the
plot exists, each seed's run has its own directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmrl.errors import UserError
from mmrl.workflow import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (ROOT / "configs" / "repro").glob("*.yaml") if p.name != "base.yaml")
# Two seeds where the aggregate is checked across seeds; one elsewhere, to keep the file fast.
SEEDS = {"ptst.yaml": [0, 1]}


def smoke_overrides(config: Path, out: Path, seeds: list[int]) -> list[str]:
    """key=value overrides that shrink every step of `config`: 1 step per stage, G=2, 8-token completions."""
    steps = yaml.safe_load(config.read_text(encoding="utf-8"))["pipeline"]
    args = {"model.name_or_path": "tiny", "output_dir": str(out), "seeds": seeds, "trainer.prompts_per_step": 2,
            "trainer.batch_size": 2, "trainer.sample_steps": 0, "rollout.group_size": 2,
            "rollout.max_completion_length": 8, "eval.max_new_tokens": 6, "eval.batch_size": 4}
    for i, step in enumerate(steps):
        if step["kind"] == "build-data" and step["args"]["builder"] in ("synthetic", "digits"):
            args[f"pipeline.{i}.args.n"] = 8
            if "eval_n" in step["args"]:  # a step without eval items (SFT data) stays without
                args[f"pipeline.{i}.args.eval_n"] = 4
        elif step["kind"] == "sft":
            args[f"pipeline.{i}.overrides"] = {**step.get("overrides", {}), "trainer.max_steps": 1}
        elif step["kind"] == "train":
            stages = step.get("overrides", {}).get("stages")
            assert stages, f"{config.name}: train step '{step['name']}' should say its length as stages"
            for j in range(len(stages)):
                args[f"pipeline.{i}.overrides.stages.{j}.steps"] = 1
                args[f"pipeline.{i}.overrides.stages.{j}.group_size"] = 2
                args[f"pipeline.{i}.overrides.stages.{j}.max_completion_length"] = 8
    return [f"{key}={json.dumps(value)}" for key, value in args.items()]


@pytest.mark.parametrize("name", CONFIGS)
def test_repro_config_runs_every_arm_and_seed(name, tmp_path, tiny_model_dir):
    config = ROOT / "configs" / "repro" / name
    steps = yaml.safe_load(config.read_text(encoding="utf-8"))["pipeline"]
    labels = [s.get("args", {}).get("label", s["name"]) for s in steps if s["kind"] == "eval"]
    trains = {s["name"]: len(s["overrides"]["stages"]) for s in steps if s["kind"] == "train"}
    seeds = SEEDS.get(name, [0])
    assert len(trains) >= 2, f"{name}: an ablation compares at least two arms"

    summary = run_pipeline(config, smoke_overrides(config, tmp_path / "run", seeds), echo=lambda line: None)

    written = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert written["seeds"] == seeds and summary["seeds"] == seeds
    assert list(written["arms"]) == labels
    for label in labels:
        acc = written["arms"][label]["accuracy"]
        assert len(acc["values"]) == len(seeds) and acc["n"] == len(seeds)
        assert 0.0 <= acc["min"] <= acc["mean"] <= acc["max"] <= 1.0
        assert written["arms"][label]["completion_length"]["mean"] > 0
    for train, n_stages in trains.items():
        entry = written["train"][train]
        assert entry["sampled_tokens"]["n"] == len(seeds) and entry["sampled_tokens"]["min"] > 0
        assert entry["seconds"]["n"] == len(seeds)
        curve = written["curves"][train]["completion_length/incorrect"]
        assert curve["step"] == list(range(1, n_stages + 1))  # one training step per stage in this cut-down run
    assert (tmp_path / "run" / "summary.png").stat().st_size > 0
    _check_claims(yaml.safe_load(config.read_text(encoding="utf-8")).get("claims", []), written, seeds)
    for seed in seeds:
        one = json.loads((tmp_path / "run" / f"seed-{seed}" / "summary.json").read_text(encoding="utf-8"))
        assert sorted(one["accuracy"]) == sorted(labels)
        _check_arms_ran_as_configured(steps, one, seed)
        run_dir = Path(one["steps"][next(iter(trains))]["outputs"]["run_dir"])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        assert all(r["completion_tokens"] > 0 for r in rows)
        # the untrained tiny model answers nothing right: every completion is an incorrect one
        assert all(r["completion_length/incorrect"] == pytest.approx(r["completion_length/mean"]) for r in rows)


def _check_claims(claims, written, seeds):
    """Every claim of the config is in summary.json, measured on every seed, with a verdict by the stated rule."""
    assert claims, "an ablation states its claims before it runs"
    assert list(written["claims"]) == [c["name"] for c in claims]
    for claim in claims:
        result = written["claims"][claim["name"]]
        assert (result["arm"], result["baseline"], result["direction"]) == (
            claim["arm"], claim["baseline"], claim["direction"])
        assert result["n"] == len(seeds) and all(r["difference"] is not None for r in result["per_seed"].values())
        assert result["verdict"] in ("reproduced", "opposite", "not distinguishable")
        if len(seeds) > 1:
            low, high = result["interval"]
            assert low <= result["difference"] <= high
        else:
            assert result["interval"] is None and result["verdict"] == "not distinguishable"


def _dotted(tree, key):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _check_arms_ran_as_configured(steps, one, seed):
    """Every arm did what its config says, not just "something": each train/sft step started from the model its
    args.model names, with the seed of its run and its own overrides, and ran every stage of its list in order (by
    name); each eval evaluated the checkpoint of the step its args.model names."""
    checkpoints = {"base": "tiny"}
    latest = "tiny"
    for step in steps:
        record = one["steps"][step["name"]]
        chosen = step.get("args", {}).get("model")
        if step["kind"] == "eval":
            assert record["outputs"]["model"] == (checkpoints[chosen] if chosen else latest), step["name"]
            assert record["metrics"]["n"] == 4, step["name"]
        if step["kind"] not in ("sft", "train"):
            continue
        run_dir = Path(record["outputs"]["run_dir"])
        ran = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        if "data.train" not in step.get("overrides", {}):  # the reading items train only the step that names them
            assert all("/read_data/" not in d["path"] for d in ran["data"]["train"]), step["name"]
        assert ran["model"]["name_or_path"] == (checkpoints[chosen] if chosen else latest), step["name"]
        assert ran["trainer"]["seed"] == seed, step["name"]
        for key, value in step.get("overrides", {}).items():
            if key in ("stages", "trainer.max_steps"):  # cut down by the smoke overrides
                continue
            if key == "data.train":  # "{read_data.train}": the file that earlier step wrote
                producers = [d["path"].strip("{}").split(".")[0] for d in value]
                assert [d["path"] for d in ran["data"]["train"]] == [
                    one["steps"][p]["outputs"]["train"] for p in producers], step["name"]
                continue
            assert _dotted(ran, key) == pytest.approx(value), f"{step['name']}: {key}"
        if step["kind"] == "train":
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
            assert [r["stage_name"] for r in rows] == [st["name"] for st in step["overrides"]["stages"]]
            assert len(ran["stages"]) == len(step["overrides"]["stages"]), step["name"]
            for stage, written in zip(step["overrides"]["stages"], ran["stages"]):
                assert len(written["data"] or []) == len(stage.get("data") or []), step["name"]
                for data, path in zip(stage.get("data") or [], written["data"] or []):
                    producer = data["path"].strip("{}").split(".")[0]  # "{mc_data.train}" -> that step's file
                    assert path["path"] == one["steps"][producer]["outputs"]["train"], step["name"]
        checkpoints[step["name"]] = latest = record["outputs"]["checkpoint"]


def test_seeds_listed_twice_are_refused(tmp_path):
    config = ROOT / "configs" / "repro" / "ptst.yaml"
    with pytest.raises(UserError, match=r"seeds \[1\] are listed twice"):
        run_pipeline(config, [f"output_dir={tmp_path}", "seeds=[0, 1, 1]"], echo=lambda line: None)
    assert not (tmp_path / "seed-0").exists()  # refused before anything ran
