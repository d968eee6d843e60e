"""configs/openvlthinker/iterative.yaml on the tiny preset: 2 iterations of SFT from the base -> GRPO -> eval ->
rejection-sampled SFT data from the new policy; each iteration's eval in summary.json; a re-run skips every step."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mmrl.workflow import run_pipeline

ROOT = Path(__file__).resolve().parents[2]


def small_copy(tmp: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/openvlthinker/iterative.yaml").read_text())
    cfg["output_dir"] = str(tmp / "runs")
    cfg["model"]["name_or_path"] = "tiny"
    cfg["rollout"].update(group_size=2, max_completion_length=4)
    cfg["trainer"].update(prompts_per_step=2, batch_size=2, report_to=["jsonl"], progress=False, sample_steps=0)
    cfg["eval"].update(limit=4, max_new_tokens=4, batch_size=4)
    for step in cfg["pipeline"]:
        if step["kind"] in ("sft", "train"):
            step["overrides"]["trainer.max_steps"] = 2
        if step["name"] == "rl_data":
            step["args"].update(n=6, eval_n=4)
        if step.get("args", {}).get("builder") == "rejection":
            step["args"].update(k=2, max_new_tokens=4)
    path = tmp / "iterative.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_iterations_on_the_tiny_preset(tmp_path):
    path = small_copy(tmp_path)
    lines: list[str] = []
    summary = run_pipeline(path, echo=lines.append)
    root = tmp_path / "runs"
    assert set(summary["accuracy"]) == {"base", "iter1", "iter2"}
    assert json.loads((root / "summary.json").read_text())["accuracy"] == summary["accuracy"]
    done = {d.name: json.loads((d / "DONE.json").read_text()) for d in root.iterdir() if (d / "DONE.json").exists()}
    rl_train = done["rl_data"]["outputs"]["train"]

    def cfg(step: str) -> dict:
        return yaml.safe_load((root / step / "config.yaml").read_text())

    # Every SFT starts from the base; GRPO from that SFT, on the RL data; rejection samples the new policy.
    assert cfg("sft_1")["model"]["name_or_path"] == cfg("sft_2")["model"]["name_or_path"] == "tiny"
    assert cfg("grpo_2")["model"]["name_or_path"] == done["sft_2"]["outputs"]["checkpoint"]
    assert [d["path"] for d in cfg("grpo_2")["data"]["train"]] == [rl_train]
    # Iteration 2's SFT data is what rejection_1 wrote with grpo_1's policy.
    assert [d["path"] for d in cfg("sft_2")["data"]["train"]] == [done["rejection_1"]["outputs"]["train"]]
    report = json.loads((root / "rejection_1" / "report.json").read_text())
    assert report["model"] == done["grpo_1"]["outputs"]["checkpoint"]
    assert report["input"] == 6 and report["kept"] + sum(report["rejected"].values()) == 6 and report["failed"] == {}
    # --keep-previous: the rows carried over from the input say so, and the report counts them.
    rows = [json.loads(line) for line in Path(done["rejection_1"]["outputs"]["train"]).read_text().splitlines()]
    assert sum(r["meta"]["rejection"]["carried_over"] for r in rows) == report["kept_previous"]
    assert summary["models"]["iter2"] == done["grpo_2"]["outputs"]["checkpoint"]
    # Resumable: a re-run skips every finished step.
    again: list[str] = []
    run_pipeline(path, echo=again.append)
    assert sum("skipped (done)" in line for line in again) == len(done) == 10
