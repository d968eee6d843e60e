"""The demos' handler functions without a browser: uploads, scoring, frames, drawing, the run viewer, the CLI and the
launch settings (a real server on 127.0.0.1). Model demos use the real tiny model where a reply is needed and fixed
completions where the geometry is what is tested."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from demos._common import DemoInputError, draw_marks, read_upload, shown_errors

gr = pytest.importorskip("gradio")


def good_image(path: Path, size=(160, 120)) -> Path:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([20, 30, 80, 90], fill="blue")
    image.save(path)
    return path


def huge_png(path: Path, side: int = 10_000) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


# ---------------------------------------------------------------- uploads
def test_read_upload_accepts_an_image_and_explains_every_bad_one(tmp_path):
    assert read_upload(good_image(tmp_path / "ok.png")).size == (160, 120)
    rgba = tmp_path / "alpha.webp"
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(rgba)
    assert read_upload(rgba).mode == "RGB"
    (tmp_path / "text.png").write_text("hello")
    whole = good_image(tmp_path / "whole.png", (300, 300)).read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "notes.txt").write_text("hello")
    with open(tmp_path / "big.png", "wb") as handle:
        handle.truncate(25 * 2**20)  # sparse: 25 MB on paper
    cases = {
        None: "upload an image first",
        tmp_path / "text.png": "text.png: not a readable image",
        tmp_path / "cut.png": "cut.png: truncated or corrupt",
        huge_png(tmp_path / "bomb.png"): "bomb.png: too many pixels",
        tmp_path / "notes.txt": "notes.txt: not an image file",
        tmp_path / "big.png": "above the 20 MB upload limit",
    }
    for path, message in cases.items():
        with pytest.raises(DemoInputError) as caught:
            read_upload(path)
        assert message in str(caught.value)
        assert str(tmp_path) not in str(caught.value)  # the server's paths stay out of the page


def test_shown_errors_turns_failures_into_one_status_line(caplog):
    @shown_errors(3, 0)
    def bad_input(x):
        raise DemoInputError(f"gold: give <JSON> for {x}")

    @shown_errors(3, 0)
    def broken(x):
        raise KeyError("boom")

    @shown_errors(2, 1)
    def streams(x):
        yield "partial", ""
        raise ValueError("line one\nline two")

    status, *rest = bad_input("q")
    assert status == "⚠️ gold: give &lt;JSON&gt; for q"  # Markdown would swallow a raw <tag>
    assert all(isinstance(r, dict) or r is not None for r in rest)
    assert broken(1)[0] == "⚠️ error: KeyError: 'boom'"
    outputs = list(streams(1))
    assert outputs[0] == ("partial", "") and outputs[1][1] == "⚠️ error: ValueError: line one"
    assert "Traceback" in caplog.text  # logged in full on the server, not shown


def test_draw_marks_draws_in_image_pixels_and_clips_wild_coordinates():
    image = Image.new("RGB", (100, 80), "white")
    drawn = draw_marks(image, boxes=[([10, 10, 50, 40], "red", "")], points=[([1e9, -5], "lime", "")])
    assert drawn.getpixel((10, 25)) == (255, 0, 0) and drawn.getpixel((30, 25)) == (255, 255, 255)
    assert drawn.getpixel((99, 0)) == (0, 255, 0)  # a point far outside is drawn at the clipped corner
    assert image.getpixel((10, 25)) == (255, 255, 255)  # the upload itself is untouched


# ---------------------------------------------------------------- rewards playground
def test_reward_playground_scores_every_applicable_reward_and_says_why(tmp_path):
    from demos.rewards import score_table

    rows, parse, drawn = score_table("<think>2 and 2</think><answer>4</answer>", "4", "count")
    scores = {name: score for name, score, _ in rows}
    assert scores["format"] == 1.0 and scores["accuracy"] == 1.0 and "iou" not in scores
    assert "<answer> tags" in parse.replace("&lt;", "<").replace("&gt;", ">") and drawn is None
    # Hedged and in-reasoning answers earn nothing, and the parse says why.
    rows, parse, _ = score_table("<think>maybe <answer>4</answer></think>", "4", "count")
    assert {n: s for n, s, _ in rows}["accuracy"] == 0.0 and "inside the reasoning" in parse
    rows, _, _ = score_table("<think>x</think><answer>A, B</answer>", "B", "mc", "a cat\na dog")
    assert {n: s for n, s, _ in rows}["accuracy"] == 0.0
    # An unusable gold is reported as unscorable, never scored.
    rows, _, _ = score_table("<think>x</think><answer>4</answer>", "forty two", "math")
    assert [(s, note.split(":")[0]) for n, s, note in rows if n == "accuracy"] == [("None", "unscorable")]
    # Boxes: the image gives the pixel frame, and both boxes are drawn on it.
    rows, _, drawn = score_table("<think>x</think><answer>[20, 30, 80, 90]</answer>", "[20, 30, 80, 90]",
                                 "grounding", image_path=str(good_image(tmp_path / "s.png")))  # fmt: skip
    assert {n: s for n, s, _ in rows}["iou"] == 1.0 and drawn.size == (160, 120)
    with pytest.raises(DemoInputError, match="for task 'gui' give JSON"):
        score_table("<answer>x</answer>", "click the button", "gui")
    with pytest.raises(DemoInputError, match="WIDTHxHEIGHT"):
        score_table("<answer>[1, 2, 3, 4]</answer>", "[1, 2, 3, 4]", "grounding", size="wide")


# ---------------------------------------------------------------- chat
def test_split_reply_separates_reasoning_and_answer_while_streaming():
    from demos.chat import split_reply

    assert split_reply("<think>a") == ("a", "")
    assert split_reply("<think>a</think>") == ("a", "")
    assert split_reply("<think>a</think><answer>42") == ("a", "42")
    assert split_reply("<think>a</think> so <answer> 42 </answer>") == ("a", "42")
    assert split_reply("plain answer") == ("", "plain answer")


def test_reply_rewards_give_format_and_accuracy_only_with_a_gold():
    from demos.chat import reply_rewards

    assert reply_rewards("<think>x</think><answer>3</answer>", "", "count") == []
    rows = reply_rewards("<think>x</think><answer>3</answer>", "3", "count")
    assert rows == [["format", 1.0, ""], ["accuracy", 1.0, ""]]
    assert {r[0]: r[1] for r in reply_rewards("<answer>2</answer>", "3", "count")} == {"format": 0.0, "accuracy": 0.0}


@pytest.fixture(scope="module")
def tiny_model():
    from demos._model import DemoModel

    return DemoModel.load("tiny", device="cpu")


def test_chat_stream_with_the_tiny_model_ends_with_the_rewards(tiny_model, tmp_path):
    from demos._model import Sampling
    from demos.chat import chat_stream

    image = str(good_image(tmp_path / "q.png"))
    outputs = list(chat_stream(tiny_model, image, "How many squares?", Sampling(max_new_tokens=12), "1", "count"))
    status, _, _, rewards, raw = outputs[-1]
    assert status == "done" and raw
    assert len(outputs) > 2 and outputs[0][0] == "generating…"  # streamed: the page sees the reply grow
    assert [r[0] for r in rewards] == ["format", "accuracy"]
    # The untrained model's reply is neither formatted nor right: the rewards say 0, not None.
    assert [r[1] for r in rewards] == [0.0, 0.0]
    from demos._model import DemoModel

    assert DemoModel.load("tiny", device="cpu") is tiny_model  # loaded once per process
    with pytest.raises(DemoInputError, match="type a question"):
        list(chat_stream(tiny_model, image, "  ", Sampling()))


# ---------------------------------------------------------------- grounding
def test_predicted_boxes_are_mapped_from_the_model_frame_to_image_pixels(tmp_path):
    from demos.grounding import grounding_view, parse_gold_box

    image = Image.new("RGB", (200, 100), "white")
    for frame, box in (("norm1000", "[100, 200, 500, 600]"), ("input_pixel", "[28, 28, 140, 84]"),
                       ("pixel", "[20, 20, 100, 60]")):  # fmt: skip
        drawn, boxes, note = grounding_view(image, f"<answer>{box}</answer>", frame, (280, 140), "[20, 20, 100, 60]")
        assert boxes == [[20.0, 20.0, 100.0, 60.0]], frame
        assert "IoU (iou reward): 1.000" in note
        assert drawn.getpixel((20, 40)) == (255, 0, 0) or drawn.getpixel((20, 40)) == (0, 255, 0)
    drawn, boxes, note = grounding_view(image, "no box here", "pixel", (280, 140), "[20, 20, 100, 60]")
    assert boxes == [] and "no box" in note and "0.000" in note
    with pytest.raises(DemoInputError, match="gold box"):
        parse_gold_box("[30, 30, 10, 10]", (200, 100))


def test_grounding_handler_runs_the_tiny_model_and_draws(tiny_model, tmp_path):
    from demos._model import Sampling
    from demos.grounding import locate

    note, drawn, reply, boxes = locate(tiny_model, str(good_image(tmp_path / "g.png")), "the blue square",
                                       "auto (the model's own)", "[20, 30, 80, 90]", Sampling(max_new_tokens=8))  # fmt: skip
    assert drawn.size == (160, 120) and isinstance(reply, str) and "iou reward" in note
    assert drawn.getpixel((20, 60)) == (0, 255, 0)  # the gold box's left edge
    with pytest.raises(DemoInputError, match="type what to find"):
        locate(tiny_model, str(good_image(tmp_path / "g.png")), "", "pixel", "", Sampling())


# ---------------------------------------------------------------- gui
def test_gui_view_reads_the_click_in_the_model_frame_and_scores_it():
    from demos.gui import gui_view, parse_gui_gold

    screen = Image.new("RGB", (400, 400), "white")
    reply = "<think>t</think><answer>[{'action': 'click', 'coordinate': [75, 75]}]</answer>"
    drawn, action, note = gui_view(screen, reply, "input_pixel", (200, 200), "[100, 100, 200, 200]")
    assert action["coordinate"] == [75, 75] and "(150, 150) px" in note and "3.0" in note
    assert drawn.getpixel((150, 150 - 9)) == (255, 0, 0)  # the click ring, drawn in screenshot pixels
    _, _, note = gui_view(screen, reply, "input_pixel", (200, 200), "[10, 10]")  # a point gold far away
    assert "**2.0** / 3" in note
    _, action, note = gui_view(screen, "<answer>tap it</answer>", "input_pixel", (200, 200), "")
    assert action is None and "no action" in note
    assert parse_gui_gold("[5, 6]") == {"action_type": "click", "x": 5, "y": 6}
    with pytest.raises(DemoInputError, match="gold: give a box"):
        parse_gui_gold('{"x": 1}')


# ---------------------------------------------------------------- runs
def make_run(root: Path) -> Path:
    run = root / "run"
    (run / "samples").mkdir(parents=True)
    rows = [{"step": s, "stage": int(s > 3), "stage_name": "warm" if s <= 3 else "hard", "reward/total": s / 10,
             "reward/accuracy": s / 20, "kl": 0.01 * s, "entropy": 5.0, "loss/clip_frac_high": 0.1}
            for s in range(1, 7)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    good_image(run / "a.png")
    sample = {"id": "a", "answer": "1", "completion": "x" * 1000, "reward": 1.0, "advantage": 0.0,
              "reward/accuracy": 1.0, "images": ["a.png", "gone.png"]}  # fmt: skip
    (run / "samples" / "step-6.jsonl").write_text(json.dumps(sample) + "\n")
    (run / "samples" / "step-2.jsonl").write_text("not json\n")
    return run


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


# ---------------------------------------------------------------- CLI and launch settings
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


@pytest.mark.parametrize("name", ["demos._scoring", "demos.chat", "demos.grounding", "demos.gui"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# ---------------------------------------------------------------- review of issue 18: hostile uploads and golds
def _noise_png(path: Path, side: int = 300) -> tuple[bytes, list[tuple[int, bytes, int]]]:
    """A PNG of random pixels (several IDAT chunks) and its chunks as (offset, type, length)."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data, pos, chunks = path.read_bytes(), 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        chunks.append((pos, data[pos + 4 : pos + 8], length))
        pos += 12 + length
    return data, chunks


def test_a_png_cut_short_is_refused_unless_every_pixel_is_there(tmp_path):
    data, chunks = _noise_png(tmp_path / "whole.png")
    whole = read_upload(tmp_path / "whole.png")
    # Only the IEND marker missing: every pixel row was decoded, so nothing is dropped or garbled.
    (tmp_path / "no-iend.png").write_bytes(data[: next(p for p, kind, _ in chunks if kind == b"IEND")])
    assert read_upload(tmp_path / "no-iend.png").tobytes() == whole.tobytes()
    # Cut before the last pixel-data chunk: rows are missing, and the page says so instead of showing half a picture.
    last_idat = [p for p, kind, _ in chunks if kind == b"IDAT"][-1]
    (tmp_path / "no-last-idat.png").write_bytes(data[:last_idat])
    with pytest.raises(DemoInputError, match="no-last-idat.png: truncated or corrupt"):
        read_upload(tmp_path / "no-last-idat.png")


def test_a_truncated_webp_and_a_one_pixel_image_get_a_message_for_the_uploader(tmp_path):
    Image.new("RGB", (120, 90), "red").save(tmp_path / "whole.webp")
    data = (tmp_path / "whole.webp").read_bytes()
    (tmp_path / "cut.webp").write_bytes(data[: len(data) // 2])  # Pillow fails while opening, with an OSError
    with pytest.raises(DemoInputError, match=r"^cut.webp: not a readable image \(truncated or corrupt\)"):
        read_upload(tmp_path / "cut.webp")
    Image.new("RGB", (1, 1)).save(tmp_path / "pixel.png")
    with pytest.raises(DemoInputError) as caught:
        read_upload(tmp_path / "pixel.png")
    assert "pixel.png: image is 1x1 pixels" in str(caught.value) and "at least 2 pixels" in str(caught.value)
    assert "data." not in str(caught.value)  # no training-config key in a page for people who uploaded a picture


def test_grounding_gold_box_off_the_image_or_without_area_is_refused():
    from demos.grounding import grounding_view, parse_gold_box

    for text, message in (("[500, 500, 600, 600]", "lies outside the 160x120 image"),
                          ("[-50, -50, -10, -10]", "lies outside"), ("[10, 10, 10, 40]", "has no area")):  # fmt: skip
        with pytest.raises(DemoInputError, match=message):
            parse_gold_box(text, (160, 120))
    assert parse_gold_box("[150, 100, 400, 400]", (160, 120)) == [150.0, 100.0, 400.0, 400.0]  # overlapping: kept
    # A predicted box wholly off the image is drawn clipped to the edge; the note says so.
    image = Image.new("RGB", (160, 120), "white")
    _, boxes, note = grounding_view(image, "<answer>[2000, 2000, 3000, 3000]</answer>", "norm1000", (280, 224))
    assert boxes == [[320.0, 240.0, 480.0, 360.0]] and "box 1 lies outside the image" in note


@pytest.mark.parametrize("gold, message", [
    ('{"action_type": "click", "bbox": [1, 2]}', "a click needs a box"),
    ('{"action_type": "click", "bbox": "abc"}', "a click needs a box"),
    ('{"action_type": "click", "x": "a", "y": null}', "a click needs a box"),
    ("[1e999, 2]", "a click needs a box"),
    ('["a", "b"]', "a click needs a box"),
    ('{"action": 5}', "is not one of click"),
    ('{"action_type": ["click"]}', "is not one of click"),
    ('{"action_type": "type", "text": "hi"}', "'type' is not one of click, open_app"),
    ("[500, 500, 600, 600]", "outside the 160x120 screenshot"),
    ("[1000, 10]", "outside the 160x120 screenshot"),
])
def test_gui_gold_the_reward_cannot_score_is_refused_with_the_reason(gold, message):
    from demos.gui import gui_view

    reply = "<answer>[{'action': 'click', 'coordinate': [50, 40]}]</answer>"
    with pytest.raises(DemoInputError, match=message):  # was: scored None or a silent 0.0
        gui_view(Image.new("RGB", (160, 120), "white"), reply, "pixel", (160, 120), gold)


def test_gui_gold_in_every_accepted_shape_is_scored():
    from demos.gui import gui_view

    reply = "<answer>[{'action': 'click', 'coordinate': [50, 40]}]</answer>"
    screen = Image.new("RGB", (160, 120), "white")
    for gold in ("[40, 30, 60, 50]", "[50, 40]", '{"action_type": "click", "bbox": [150, 100, 400, 400]}',
                 '{"action": "Scroll", "direction": "down"}'):  # fmt: skip
        _, _, note = gui_view(screen, reply, "pixel", (160, 120), gold)
        assert "/ 3" in note, gold


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


def test_a_seed_the_sampler_cannot_take_is_refused_before_the_model_runs():
    from demos._common import MAX_SEED, to_sampling

    assert to_sampling(0.7, 1.0, 0, 8, MAX_SEED).seed == MAX_SEED
    for seed in (1e30, float("nan"), -5, 2.5):  # 1e30 was "error: ValueError: Overflow when unpacking long long"
        with pytest.raises(DemoInputError, match="seed: give a whole number"):
            to_sampling(0.7, 1.0, 0, 8, seed)


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


def test_a_model_that_does_not_exist_stops_the_demo_with_one_line_naming_the_flag(capsys):
    from mmrl.cli import main

    assert main(["demo", "chat", "--model", "/nonexistent/checkpoint", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrl demo: error: --model: '/nonexistent/checkpoint' does not exist"), err
    assert len(err.splitlines()) == 1 and "model.name_or_path" not in err  # no config key for a flag's user
