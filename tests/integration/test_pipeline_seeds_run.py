"""`seeds:` sweeps of a real (tiny) pipeline: a seed that fails part-way, and what the aggregate keeps."""

from __future__ import annotations

import json
import shutil

import yaml

from mmrl.cli import main

PIPELINE = {
    "name": "sweep", "seeds": [0, 1], "model": {"name_or_path": "tiny"},
    "eval": {"max_new_tokens": 4, "batch_size": 4},
    "pipeline": [
        {"name": "data", "kind": "build-data",
         "args": {"builder": "synthetic", "tasks": ["color"], "forms": ["open"], "n": 4, "eval_n": 4, "seed": 0,
                  "image_size": 56}},
        {"name": "eval_base", "kind": "eval", "args": {"model": "base", "label": "base"}},
    ],
}


def test_a_seed_failing_part_way_names_itself_in_one_line_and_the_aggregate_keeps_the_finished_seeds(
        tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(PIPELINE), encoding="utf-8")
    root = tmp_path / "run"
    assert main(["pipeline", str(config), f"output_dir={root}", "seeds=[0]"]) == 0
    # seed 1's data step finished, but its eval file was damaged afterwards: its eval step fails with a DataError
    shutil.copytree(root / "seed-0" / "data", root / "seed-1" / "data")
    done = root / "seed-1" / "data" / "DONE.json"
    done.write_text(done.read_text().replace(str(root / "seed-0"), str(root / "seed-1")), encoding="utf-8")
    (root / "seed-1" / "data" / "eval.jsonl").write_text('{"not": "a record"\n\n{}\n', encoding="utf-8")
    capsys.readouterr()

    code = main(["pipeline", str(config), f"output_dir={root}"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("mmrl pipeline: error: seed 1 of [0, 1]: ")
    assert str(root / "seed-1" / "data" / "eval.jsonl") in err[0]  # the cause, as the step said it
    assert f"{root / 'summary.json'} aggregates the finished seeds [0]" in err[0]
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    assert summary["seeds"] == [0] and summary["seeds_planned"] == [0, 1]
    assert summary["arms"]["base"]["accuracy"]["values"] == [0.0]


def test_a_rerun_with_changed_settings_into_a_finished_folder_is_refused_naming_the_steps_and_fields(
        tmp_path, tiny_model_dir, capsys):
    # it used to skip the changed steps and print the old settings' results with exit 0 (a "config changed" note per
    # step the only hint); a plain pipeline and a seeds sweep (a seed-<seed>/ left by a run with other settings)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(PIPELINE), encoding="utf-8")
    root = tmp_path / "run"
    assert main(["pipeline", str(config), f"output_dir={root}", "seeds=[0]"]) == 0
    summaries = {path: path.read_bytes() for path in (root / "summary.json", root / "seed-0" / "summary.json")}
    capsys.readouterr()

    for extra in (["seeds=[0]"], ["seeds=[]", f"output_dir={root / 'seed-0'}"]):
        code = main(["pipeline", str(config), f"output_dir={root}", *extra, "eval.max_new_tokens=3"])

        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "holds finished steps run with other settings: eval_base (eval.max_new_tokens); " in lines[0]
        assert "data" not in lines[0].split("other settings:")[1].split(";")[0]  # reads no eval setting: not changed
        assert str(root / "seed-0" / "eval_base") in lines[0]
        assert "accuracy" not in out and "summary" not in out  # no stale table
        assert {path: path.read_bytes() for path in summaries} == summaries
