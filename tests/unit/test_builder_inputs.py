"""Hostile inputs to the data builders, caught before any model loads or any request is sent: a record naming a
missing image file, and an absurd new-token budget (one line naming the record or field, exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmrl.cli import main

# A closed port: a builder that got as far as sending a request would report the endpoint, not the data.
DEAD = "http://127.0.0.1:9/v1"


def _data(tmp_path: Path) -> Path:
    Image.new("RGB", (56, 56), "red").save(tmp_path / "ok.png")
    rows = [{"id": "good", "images": ["ok.png"], "prompt": "What color?", "answer": "red"},
            {"id": "gone", "images": ["missing.png"], "prompt": "What color?", "answer": "red"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("builder", ["cold-start", "rejection"])
def test_a_missing_image_names_its_record_before_anything_runs(tmp_path, capsys, builder):
    data, out = _data(tmp_path), tmp_path / "out"
    if builder == "cold-start":
        argv = ["build-data", "cold-start", str(Path(__file__).resolve().parents[2] / "configs/cold_start/offline.yaml"),
                f"data={data}", f"out={out}", f"stages.describe.model={DEAD}", f"stages.reason.model={DEAD}"]
    else:
        argv = ["build-data", "rejection", "--model", DEAD, "--data", str(data), "--out", str(out)]
    err = _one_line(capsys, argv)
    assert f"{data}:2: sample gone: image 0 {tmp_path / 'missing.png'}: file not found" in err
    assert not (out / "cache.jsonl").exists()  # nothing was generated, nothing half-cached


@pytest.mark.parametrize(("override", "limit"), [("stages.reason.max_new_tokens=1000000000", "32768"),
                                                  ("stages.describe.seed=100000000000000000000000", "4294967295")])
def test_an_absurd_stage_setting_is_refused(tmp_path, capsys, override, limit):
    config = Path(__file__).resolve().parents[2] / "configs/cold_start/offline.yaml"
    err = _one_line(capsys, ["build-data", "cold-start", str(config), f"out={tmp_path / 'o'}", override])
    assert override.split("=")[0] in err and limit in err


@pytest.mark.parametrize("builder", ["cold-start", "rejection"])
def test_an_endpoint_without_its_scheme_names_the_builders_field(tmp_path, capsys, builder):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "prompt": "1+1?", "answer": "2"}) + "\n", encoding="utf-8")
    if builder == "cold-start":
        config = Path(__file__).resolve().parents[2] / "configs/cold_start/offline.yaml"
        argv, field = ["build-data", "cold-start", str(config), f"data={data}", f"out={tmp_path / 'o'}",
                       "stages.describe.model=127.0.0.1:9/v1"], "stages.pseudo_cot.model / stages.describe.model"
    else:
        argv, field = ["build-data", "rejection", "--model", "127.0.0.1:9/v1", "--data", str(data),
                       "--out", str(tmp_path / "o")], "--model"
    err = _one_line(capsys, argv)  # it said `model.name_or_path`, a key no builder has
    assert err.startswith(f"mmrl build-data: error: {field}: cannot load '127.0.0.1:9/v1'")
    assert err.endswith("; an endpoint needs its scheme: http://127.0.0.1:9/v1")
