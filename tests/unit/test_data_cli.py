"""`mmrl data show|check` and `mmrl build-data` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.cli import main

PEER = Path(__file__).parents[1] / "fixtures" / "data" / "peer"
FORMATS = {"easyr1.jsonl": "easyr1", "verl.parquet": "verl", "trl.jsonl": "trl", "mm_eureka.jsonl": "mm_eureka",
           "vlm_r1.jsonl": "vlm_r1", "r1v.jsonl": "r1v", "curr_reft.jsonl": "curr_reft", "ui_r1.json": "ui_r1",
           "screenspot.json": "screenspot", "sharegpt.jsonl": "sharegpt", "mathvista.json": "mathvista",
           "mathverse.json": "mathverse", "r1v_counting.jsonl": "r1v_counting", "imagefolder": "generic"}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_show_json_autodetects_every_format(name, capsys):
    assert main(["data", "show", str(PEER / name), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records and all({"id", "images", "prompt", "answer", "task"} <= set(r) for r in records)
    assert all(r["meta"]["format"] == FORMATS[name] for r in records)
    assert all(Path(p).is_absolute() for r in records for p in r["images"] if not p.startswith("<"))


def test_check_reports_bad_images_with_ids(tmp_path, capsys):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "d.jsonl").write_text('{"id": "ok", "prompt": "q", "answer": "1", "images": []}\n'
                                      '{"id": "bad", "prompt": "q", "answer": "1", "images": ["zero.png"]}\n')
    assert main(["data", "check", str(tmp_path / "d.jsonl")]) == 2
    captured = capsys.readouterr()
    assert "bad: " in captured.err and "empty file (0 bytes)" in captured.err
    assert "2 samples, 1 images: 1 errors in 1 samples" in captured.out


def test_show_says_when_an_image_file_is_missing(tmp_path, capsys):
    # Review: a record whose image does not exist was printed without a word.
    (tmp_path / "here.png").write_bytes(b"not read by show")
    (tmp_path / "d.jsonl").write_text('{"id": "a", "prompt": "q", "answer": "1", "images": ["gone.png"]}\n'
                                      '{"id": "b", "prompt": "q", "answer": "1", "images": ["here.png"]}\n')
    assert main(["data", "show", str(tmp_path / "d.jsonl")]) == 0
    captured = capsys.readouterr()
    assert f"image: {tmp_path / 'gone.png'}   MISSING: no such file" in captured.out
    assert f"image: {tmp_path / 'here.png'}\n" in captured.out
    assert f"1 image file(s) missing (first: {tmp_path / 'gone.png'})" in captured.err
    assert main(["data", "show", str(tmp_path / "d.jsonl"), "--json"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["a", "b"]  # JSON lines stay JSON
    assert "1 image file(s) missing" in captured.err


def test_user_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"prompt": "q", "answer": "1"}\n{oops\n')
    assert main(["data", "show", str(tmp_path / "d.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "d.jsonl:2: malformed JSON" in err
    assert main(["data", "show", str(tmp_path / "d.jsonl"), "--format", "bogus"]) == 2
    assert "known formats:" in capsys.readouterr().err


def test_build_data_synthetic_then_curriculum_then_show(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["build-data", "synthetic", "--tasks", "color,count", "--n", "8", "--seed", "1", "--out", str(out),
                 "--image-size", "56", "--forms", "open"]) == 0
    assert main(["build-data", "curriculum", str(out / "train.jsonl"), str(tmp_path / "cur")]) == 0
    capsys.readouterr()
    assert main(["data", "show", str(tmp_path / "cur" / "stage2_mc.jsonl"), "--json", "--limit", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and records[0]["task"] == "mc" and Path(records[0]["images"][0]).is_file()
