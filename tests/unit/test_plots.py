"""`mmrl plot`: PNGs from metrics.jsonl with stage boundaries; missing keys skip a plot; missing file is a UserError."""

from __future__ import annotations

import json

import pytest

from mmrl.cli import main
from mmrl.errors import UserError
from mmrl.eval.plots import plot_run, read_metrics, stage_changes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, with_kl: bool = True) -> None:
    rows = []
    for step in range(1, 31):
        stage = 0 if step <= 12 else 1
        row = {"step": step, "loss": 1.0 / step, "reward/total": step / 30, "reward/accuracy": step / 40,
               "reward/format": 0.5, "completion_length/mean": 20 + step, "stage": stage,
               "stage_name": ["short", "long"][stage]}
        if with_kl:
            row["kl"] = 0.01 * step
        rows.append(row)
    rows.append({"step": 30, "loss": 0.02, "stage": 1, "stage_name": "long"})  # a resumed run re-logs step 30
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 31, "lo'  # killed mid-write
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text(text)


def test_plot_run_writes_pngs_and_marks_the_stage_switch(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    rows = read_metrics(run / "metrics.jsonl")
    assert len(rows) == 30 and rows[-1]["loss"] == 0.02  # last row per step wins; the partial line is ignored
    assert stage_changes(rows) == [(1, "short"), (13, "long")]
    written, notes = plot_run(run)
    names = sorted(p.name for p in written)
    assert names == ["accuracy.png", "completion_length.png", "kl.png", "loss.png", "reward.png"]
    assert notes == []
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        assert path.parent == run / "plots"


def test_missing_keys_skip_a_plot_with_a_note_and_the_cli_prints_it(tmp_path, capsys):
    run = tmp_path / "run"
    _write_run(run, with_kl=False)
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert "note: kl: skipped" in out and "reward.png" in out
    assert not (run / "plots" / "kl.png").exists()


def test_missing_metrics_and_bad_lines_are_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="metrics.jsonl not found"):
        plot_run(tmp_path)
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON object"):
        plot_run(tmp_path)
