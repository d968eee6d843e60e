"""The run viewer (curves per stage, samples, uploaded and broken metrics files), `mmrl demo` on the command line
and the launch settings (a real server on 127.0.0.1)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from demos._common import DemoInputError
from tests.unit.demo_assets import make_run

gr = pytest.importorskip("gradio")


def test_run_viewer_reads_curves_per_stage_and_samples(tmp_path):
    from demos.runs import curves, load_run, read_samples, sample_images, samples_table, stage_names

    run = load_run(make_run(tmp_path))
    assert run.sample_steps == [2, 6] and stage_names(run.rows) == ["warm", "hard"]
    figures, notes = curves(run.rows)
    titles = [t for _, t in figures]
    assert {"Reward", "KL to the reference", "Entropy of the policy", "Clip fractions"} <= set(titles)
    assert any("Loss" in n for n in notes)  # not logged: said, not drawn empty
    hard_only, _ = curves(run.rows, "hard")
    assert len(hard_only) == len(figures)
    with pytest.raises(DemoInputError, match="no metrics rows"):
        curves(run.rows, "nonexistent")
    samples = read_samples(run, 6)
    headers, rows = samples_table(samples)
    assert headers == ["#", "id", "answer", "reward", "reward/accuracy", "advantage", "completion"]
    assert rows[0][-1].endswith("…") and len(rows[0][-1]) < 1000
    assert [im.size for im in sample_images(run, samples[0])] == [(160, 120)]  # the missing one is left out
    problems: list[str] = []
    sample_images(run, samples[0], problems)
    assert problems == ["image gone.png not shown: image file not found"]  # and the page says so
    with pytest.raises(DemoInputError, match="step-2.jsonl:1: not a JSON line"):
        read_samples(run, 2)
    with pytest.raises(DemoInputError, match="no samples saved at step 5"):
        read_samples(run, 5)


def test_an_uploaded_run_is_overlaid_on_this_runs_curves(tmp_path):
    """Compare draws the other run's metrics dashed on the same axes as this run's (it drew the upload alone)."""
    import numpy as np

    from demos.runs import curves, load_run

    run = load_run(make_run(tmp_path))
    other = [{"step": s, "reward/total": 1 - s / 10, "loss": 0.5 / s} for s in range(1, 7)]
    alone, _ = curves(run.rows)
    both, notes = curves(run.rows, other=("uploaded metrics.jsonl", other))
    captions = {t.split(":")[0]: t for _, t in both}
    assert captions["Reward"] == "Reward: this run (solid) vs uploaded metrics.jsonl (dashed)"
    # This run's panels are all still there (KL, entropy: only this run logs them), and the upload's loss, which
    # this run does not log, gets its panel too.
    assert set(captions) == {t for _, t in alone} | {"Loss"} and not any("Loss" in n for n in notes)
    reward_alone = np.asarray(next(f for f, t in alone if t == "Reward"))
    reward_both = np.asarray(next(f for f, t in both if t.startswith("Reward")))
    assert reward_alone.shape == reward_both.shape and (reward_alone != reward_both).any()


def test_uploaded_metrics_are_checked(tmp_path):
    from demos.runs import uploaded_metrics

    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DemoInputError, match=r"^metrics.jsonl:2: not a JSON object"):
        uploaded_metrics(str(bad))
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DemoInputError, match="not UTF-8"):
        uploaded_metrics(str(bad))
    good = tmp_path / "good.jsonl"
    good.write_text('{"step": 2, "loss": 1}\n{"step": 1, "loss": 2}\n')
    assert [r["step"] for r in uploaded_metrics(str(good))] == [1, 2]


def test_run_viewer_refuses_an_empty_or_binary_metrics_file_in_one_line(tmp_path, capsys):
    from demos.runs import load_run, read_samples
    from mmrl.cli import main
    from mmrl.errors import UserError

    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "metrics.jsonl").write_text("")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (tmp_path / "bare").mkdir()
    for name, message in (("blank", "no steps logged yet"), ("binary", "not UTF-8"),
                          ("bare", "`mmrl demo runs` needs a run directory")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            load_run(tmp_path / name)
        assert main(["demo", "runs", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    run = load_run(make_run(tmp_path))
    (run.path / "samples" / "step-6.jsonl").write_text('["not", "a", "sample"]\n')
    with pytest.raises(DemoInputError, match="step-6.jsonl:1: not a JSON object"):
        read_samples(run, 6)


def test_the_run_viewer_points_from_a_pipeline_directory_to_the_runs_inside_it(tmp_path, capsys):
    from mmrl.cli import main

    pipeline = tmp_path / "quickstart"
    for step in ("sft", "grpo"):
        (pipeline / step).mkdir(parents=True)
        (pipeline / step / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert main(["demo", "runs", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert f"the runs inside it: {pipeline / 'grpo'}, {pipeline / 'sft'}" in err
    # The help's example names a directory the quickstart really writes a run into (its GRPO step).
    with pytest.raises(SystemExit):
        main(["demo", "runs", "--help"])
    assert "mmrl demo runs runs/quickstart/grpo" in capsys.readouterr().out


def test_demo_help_lists_the_five_demos_with_examples(capsys):
    from mmrl.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for name in ("chat", "grounding", "gui", "rewards", "runs"):
        assert f"mmrl demo {name}" in text
    assert main(["demo", "runs", str(Path("/nonexistent/run"))]) == 2
    assert "run directory /nonexistent/run does not exist" in capsys.readouterr().err


def test_launch_binds_localhost_and_serves_no_other_files(tmp_path):
    import socket

    from demos._common import MAX_UPLOAD_MB, QUEUE_SIZE, launch
    from demos.rewards import build_app

    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app()
    launch(app, port=port, prevent_thread_lock=True)
    try:
        assert app.server_name == "127.0.0.1" and app.share is False
        assert app.max_file_size == MAX_UPLOAD_MB * 1024 * 1024
        assert app._queue.max_size == QUEUE_SIZE
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as page:
            assert page.status == 200
        for path in (str(secret), "/etc/passwd", "../../../etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/file={path}")
            assert caught.value.code in (403, 404)
    finally:
        app.close()


def test_a_model_that_does_not_exist_stops_the_demo_with_one_line_naming_the_flag(capsys):
    from mmrl.cli import main

    assert main(["demo", "chat", "--model", "/nonexistent/checkpoint", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrl demo: error: --model: '/nonexistent/checkpoint' does not exist"), err
    assert len(err.splitlines()) == 1 and "model.name_or_path" not in err  # no config key for a flag's user



def test_a_model_demo_takes_its_model_as_a_positional_too_and_refuses_two(capsys):
    from mmrl.cli import main

    assert main(["demo", "chat", "/nonexistent/checkpoint", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrl demo: error: --model: '/nonexistent/checkpoint' does not exist"), err
    assert main(["demo", "grounding", "/nonexistent/a", "--model", "/nonexistent/b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "two models given" in err and "/nonexistent/a" in err and "/nonexistent/b" in err, err
    assert len(err.splitlines()) == 1
    assert main(["demo", "chat", "/nonexistent/a", "--model", "tiny"]) == 2  # the flag's default, typed: still two
    assert "two models given" in capsys.readouterr().err
    assert main(["demo", "chat", "/nonexistent/a/", "--model", "/nonexistent/a"]) == 2  # one model: it is looked for
    assert "'/nonexistent/a/' does not exist" in capsys.readouterr().err
