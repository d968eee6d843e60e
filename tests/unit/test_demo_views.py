"""The demos' views without a browser: the reward playground, chat, grounding and GUI handlers (the real tiny model
where a reply is needed, fixed completions where the geometry is what is tested) and their docstring examples."""

from __future__ import annotations

import pytest
from PIL import Image

from demos._common import DemoInputError
from tests.unit.demo_assets import good_image

gr = pytest.importorskip("gradio")


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
    assert {n: s for n, s, _ in rows}["iou"] == 1.0 and drawn.size == (480, 360)  # shown 3x: 160 px is a speck
    with pytest.raises(DemoInputError, match="for task 'gui' give JSON"):
        score_table("<answer>x</answer>", "click the button", "gui")
    with pytest.raises(DemoInputError, match="WIDTHxHEIGHT"):
        score_table("<answer>[1, 2, 3, 4]</answer>", "[1, 2, 3, 4]", "grounding", size="wide")


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
    assert status.startswith("done") and raw
    assert len(outputs) > 2 and outputs[0][0] == "generating…"  # streamed: the page sees the reply grow
    assert [r[0] for r in rewards] == ["format", "accuracy"]
    # The untrained model's reply is neither formatted nor right: the rewards say 0, not None.
    assert [r[1] for r in rewards] == [0.0, 0.0]
    from demos._model import DemoModel

    assert DemoModel.load("tiny", device="cpu") is tiny_model  # loaded once per process
    with pytest.raises(DemoInputError, match="type a question"):
        list(chat_stream(tiny_model, image, "  ", Sampling()))


def test_predicted_boxes_are_mapped_from_the_model_frame_to_image_pixels(tmp_path):
    from demos.grounding import grounding_view, parse_gold_box

    image = Image.new("RGB", (200, 100), "white")
    for frame, box in (("norm1000", "[100, 200, 500, 600]"), ("input_pixel", "[28, 28, 140, 84]"),
                       ("pixel", "[20, 20, 100, 60]")):  # fmt: skip
        drawn, boxes, note = grounding_view(image, f"<answer>{box}</answer>", frame, (280, 140), "[20, 20, 100, 60]")
        assert boxes == [[20.0, 20.0, 100.0, 60.0]], frame
        assert "IoU (iou reward): 1.000" in note
        assert drawn.size == (600, 300)  # drawn 3x for display; the boxes stay in image pixels
        assert drawn.getpixel((60, 120)) in ((255, 0, 0), (0, 255, 0))
    drawn, boxes, note = grounding_view(image, "no box here", "pixel", (280, 140), "[20, 20, 100, 60]")
    assert boxes == [] and "no box" in note and "0.000" in note
    with pytest.raises(DemoInputError, match="gold box"):
        parse_gold_box("[30, 30, 10, 10]", (200, 100))


def test_grounding_handler_runs_the_tiny_model_and_draws(tiny_model, tmp_path):
    from demos._model import Sampling
    from demos.grounding import locate

    note, drawn, reply, boxes = locate(tiny_model, str(good_image(tmp_path / "g.png")), "the blue square",
                                       "auto (the model's own)", "[20, 30, 80, 90]", Sampling(max_new_tokens=8))  # fmt: skip
    assert drawn.size == (480, 360) and isinstance(reply, str) and "iou reward" in note
    assert drawn.getpixel((60, 180)) == (0, 255, 0)  # the gold box's left edge, at 3x
    with pytest.raises(DemoInputError, match="type what to find"):
        locate(tiny_model, str(good_image(tmp_path / "g.png")), "", "pixel", "", Sampling())


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


def test_gui_view_reads_the_click_in_the_model_frame_and_scores_it():
    from demos.gui import gui_view, parse_gui_gold

    screen = Image.new("RGB", (400, 400), "white")
    reply = "<think>t</think><answer>[{'action': 'click', 'coordinate': [75, 75]}]</answer>"
    drawn, action, note = gui_view(screen, reply, "input_pixel", (200, 200), "[100, 100, 200, 200]")
    assert action["coordinate"] == [75, 75] and "(150, 150) px" in note and "3.0" in note
    # The click ring at (150, 150) screenshot pixels, drawn on the 2x display copy (800 px: the 400 px screenshot is
    # enlarged to reach DISPLAY_SIDE).
    assert drawn.size == (800, 800) and drawn.getpixel((300, 300 - 3 * 5)) == (255, 0, 0)
    _, _, note = gui_view(screen, reply, "input_pixel", (200, 200), "[10, 10]")  # a point gold far away
    assert "**2.0** / 3" in note
    _, action, note = gui_view(screen, "<answer>tap it</answer>", "input_pixel", (200, 200), "")
    assert action is None and "no action" in note
    assert parse_gui_gold("[5, 6]") == {"action_type": "click", "x": 5, "y": 6}
    with pytest.raises(DemoInputError, match="gold: give a box"):
        parse_gui_gold('{"x": 1}')


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


@pytest.mark.parametrize("name", ["demos._common", "demos._scoring", "demos.chat", "demos.grounding", "demos.gui"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0

