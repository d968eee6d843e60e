"""`mmrl build-data synthetic|recipes` refuse an output folder that already holds data unless --overwrite, which
replaces the earlier build whole (a smaller rebuild used to leave the larger one's images behind)."""

from __future__ import annotations

from pathlib import Path

from mmrl.cli import main


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_refuses_a_folder_with_data_and_overwrite_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "synth"
    base = ["build-data", "synthetic", "--tasks", "color", "--image-size", "28", "--out", str(out)]
    assert main([*base, "--n", "8", "--eval-n", "4"]) == 0
    before = _files(out)
    capsys.readouterr()

    assert main([*base, "--n", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmrl build-data: error: --out: {out} already holds data; give another --out, or replace it "
                   "with --overwrite"]
    assert _files(out) == before  # nothing written

    assert main([*base, "--n", "4", "--overwrite"]) == 0
    assert f"--overwrite: removed the earlier data in {out}" in capsys.readouterr().err
    assert len((out / "train.jsonl").read_text().splitlines()) == 4
    assert not (out / "eval.jsonl").exists() and len(list((out / "images").iterdir())) == 4  # no stale split


def test_recipes_refuse_to_rewrite_the_usage_blocks_data_synth(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["build-data", "synthetic", "--tasks", "color", "--n", "4", "--image-size", "28",
                 "--out", str(data / "synth")]) == 0
    (data / "mine.jsonl").write_text("{}\n")  # the user's own file next to the recipes' folders
    before = _files(data)
    capsys.readouterr()
    assert main(["build-data", "recipes", "--out", str(data), "--n", "4"]) == 2
    assert f"--out: {data / 'synth'} already holds data" in capsys.readouterr().err
    assert _files(data) == before
    assert main(["build-data", "recipes", "--out", str(data), "--n", "4", "--overwrite"]) == 0
    assert (data / "mine.jsonl").read_text() == "{}\n"  # only the recipes' own folders are replaced
    assert len((data / "synth" / "train.jsonl").read_text().splitlines()) == 4
