"""`mmrl eval` on the tiny preset: --model/--data and CONFIG forms, printed table, report files, one-line errors."""

from __future__ import annotations

import json

import torch
from PIL import Image

from mmrl.cli import main


def _dataset(tmp_path) -> str:
    rows = []
    for i, (color, answer, task) in enumerate([("red", "2", "count"), ("blue", "yes", "yes_no"), ("green", "1", "count")]):
        Image.new("RGB", (56, 56), color).save(tmp_path / f"im{i}.png")
        rows.append({"id": f"q{i}", "images": [f"im{i}.png"], "prompt": "<image>What is shown?", "answer": answer,
                     "task": task, "meta": {"category": "colors"}})
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_eval_with_model_and_data_flags(tmp_path, capsys):
    torch.set_num_threads(1)
    data = _dataset(tmp_path)
    out = tmp_path / "report"
    code = main(["eval", "--model", "tiny", "--data", data, "--k", "2", "--limit", "2", "--out", str(out),
                 "--no-progress", "eval.max_new_tokens=4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| **all** | 2 | 2 |" in printed and f"report: {out / 'report.json'}" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["k"] == 2 and report["greedy"] is False and "pass@2" in report  # --k 2 switched to sampling
    assert report["model"] == "tiny" and report["data"] == [data]
    assert set(report["by_task"]) == {"count", "yes_no"} and report["by_category"]["colors"]["n"] == 2
    assert len((out / "generations.jsonl").read_text().splitlines()) == 2


def test_eval_with_a_config_file(tmp_path, capsys):
    data = _dataset(tmp_path)
    config = tmp_path / "eval.yaml"
    config.write_text(f"model:\n  name_or_path: tiny\ndata:\n  eval: {data}\neval:\n  max_new_tokens: 3\n"
                      f"trainer:\n  output_dir: {tmp_path / 'run'}\n")
    assert main(["eval", str(config), "eval.limit=1", "--no-progress"]) == 0
    (first,) = (tmp_path / "run" / "eval").glob("tiny-*/report.json")  # <run>/eval/<model>-<data>
    report = json.loads(first.read_text())
    assert report["n"] == 1 and report["k"] == 1 and report["greedy"] is True
    # Another model through the same config: its own folder (the second eval replaced the first's report).
    assert main(["eval", str(config), "eval.limit=1", "model.name_or_path=small", "--no-progress"]) == 0
    assert json.loads(first.read_text()) == report
    assert [p.parent.name.split("-")[0] for p in sorted((tmp_path / "run" / "eval").glob("*/report.json"))] == [
        "small", "tiny"]


def test_eval_bad_input_is_one_line(tmp_path, capsys):
    assert main(["eval", "--data", "x.jsonl"]) == 2
    assert "give --model" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny", "--data", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.jsonl" in err
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--data", _dataset(tmp_path)]) == 2
    assert "no-model" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny"]) == 2
    assert "--data" in capsys.readouterr().err
