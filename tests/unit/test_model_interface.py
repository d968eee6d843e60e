"""Issue 25, defects 1 and 2, on the real upstream files in tests/fixtures/real_models (see their SOURCES.md).

Frames: each family's default frame comes from its real config.json, and a correct box/point answered in that frame
scores full marks through the real rewards, the reward composite and eval scoring (the old code read a Qwen3-VL
0..1000 box as input pixels and paid 0). Thinking: the generation prompt of each real template is rendered to find
whether it opens a reasoning block (Qwen3-VL-Thinking; Qwen3 with enable_thinking=False writes a closed one), and the
strict-format rewards score the model's whole turn (the old code paid 0 for every Thinking completion).

One Qwen tokenizer (Qwen3-VL-4B-Instruct's vocab, merges and tokenizer_config) is loaded per module; the other
families' templates are rendered with it (a template is text; their token ids are not what these tests are about).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.data.sample import Sample
from mmrl.errors import UserError
from mmrl.eval.scoring import score_generations
from mmrl.models.interface import (
    ModelInterface,
    frame_of_config,
    reads_coordinates,
    resolve_interface,
    turn_prefix_of,
)
from mmrl.rewards.composite import RewardComposite

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real_models"
FOLDERS = {
    "qwen2_vl": REAL / "qwen2_vl" / "Qwen2-VL-2B-base_modelscope",
    "qwen2_5_vl": REAL / "qwen2_5_vl" / "Qwen2.5-VL-3B-Instruct",
    "qwen3_vl": REAL / "qwen3_vl_instruct" / "Qwen3-VL-4B-Instruct",
    "gemma3": REAL / "gemma3" / "gemma-3-4b-it",
    "smolvlm": REAL / "smolvlm" / "SmolVLM-256M-Instruct",
}
EXPECTED_FRAME = {"qwen2_vl": "norm1000", "qwen2_5_vl": "input_pixel", "qwen3_vl": "norm1000", "gemma3": None,
                  "smolvlm": None}
THINKING = json.loads((REAL / "qwen3_vl_thinking" / "chat_template.json").read_text())["chat_template"]


def _template(name: str) -> str:
    path = REAL / "templates" / name
    return path.read_text() if path.suffix == ".jinja" else json.loads(path.read_text())["chat_template"]


def _config(family: str) -> dict:
    return json.loads((FOLDERS[family] / "config.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FOLDERS["qwen3_vl"]))
    original = tok.chat_template
    yield tok
    tok.chat_template = original


def _with_template(tokenizer, template: str):
    tokenizer.chat_template = template
    return tokenizer


# -- defect 1: frames ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FOLDERS))
def test_each_family_frame_comes_from_its_real_config(family):
    frame, why = frame_of_config(_config(family))
    assert frame == EXPECTED_FRAME[family]
    assert _config(family)["model_type"] in why  # the reason names the model type, whatever the repo is called


# A 1000x500 image resized to 504x252 for the vision tower; the gold box in image pixels.
IMAGE, INPUT, GOLD = (1000, 500), (504, 252), [100, 100, 300, 200]
IN_FRAME = {  # the same correct box as each frame writes it
    "norm1000": [100, 200, 300, 400],
    "input_pixel": [50.4, 50.4, 151.2, 100.8],
}


def _columns(n: int, model_frame: str | None, task: str = "grounding", answer=None) -> dict:
    return {"answer": [answer if answer is not None else GOLD] * n, "task": [task] * n, "image_size": [IMAGE] * n,
            "input_size": [INPUT] * n, "box_frame": ["pixel"] * n, "box_format": ["xyxy"] * n,
            "model_frame": [model_frame] * n}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_a_correct_box_in_the_family_frame_scores_full_marks(family):
    """The issue's symptom: the same correct box scored 1.0 from a Qwen2.5-VL and 0.0 from a Qwen3-VL."""
    interface = resolve_interface(_config(family))
    box = IN_FRAME[interface.pred_frame]
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    texts = [f"<think>t</think><answer>{box}</answer>"]
    specs = [{"name": n} for n in ("iou", "giou", "iou_threshold", "multi_box_iou", "accuracy")]
    with RewardComposite(specs, workers=0) as rc:
        result = rc.score(texts, _columns(1, interface.pred_frame))
    assert {k: round(v[0], 6) for k, v in result.components.items()} == {s["name"]: 1.0 for s in specs}
    click = [f"<think>t</think><answer>[{{'action': 'click', 'coordinate': [{x}, {y}]}}]</answer>"]
    with RewardComposite([{"name": "gui_action"}], workers=0) as rc:
        gui = rc.score(click, _columns(1, interface.pred_frame, "gui", {"action_type": "click", "bbox": GOLD}))
    assert gui.components["gui_action"] == [3.0]
    with RewardComposite([{"name": "point_in_box"}], workers=0) as rc:
        point = rc.score([f"<answer>[{x}, {y}]</answer>"], _columns(1, interface.pred_frame))
    assert point.components["point_in_box"] == [1.0]
    sample = Sample(id="g", prompt="p", answer=GOLD, task="grounding", image_size=IMAGE, input_size=INPUT)
    (item,) = score_generations([sample], [texts], model_frame=interface.pred_frame)
    assert item.scores == [1.0]


def test_a_qwen3_vl_box_read_without_the_model_frame_is_the_old_defect():
    """Without the model's frame (a bare reward call: the old behaviour everywhere) the 0..1000 box is read as input
    pixels and scores 0: the column is what makes a Qwen3-VL run learn."""
    from mmrl.rewards.grounding import iou_reward

    text = [f"<answer>{IN_FRAME['norm1000']}</answer>"]
    bare = _columns(1, None)
    bare.pop("model_frame")
    assert iou_reward(text, **bare)[0] < 0.5
    assert iou_reward(text, **_columns(1, "norm1000"))[0] == pytest.approx(1.0)


def test_an_explicit_pred_frame_wins_over_the_model_frame():
    from mmrl.rewards.grounding import iou_reward

    text = [f"<answer>{IN_FRAME['input_pixel']}</answer>"]
    assert iou_reward(text, pred_frame="input_pixel", **_columns(1, "norm1000"))[0] == pytest.approx(1.0)
    assert iou_reward(text, **_columns(1, "norm1000"))[0] < 0.5


def test_model_pred_frame_overrides_the_family_default_and_is_checked():
    interface = resolve_interface(_config("gemma3"), pred_frame="norm1000")
    assert (interface.pred_frame, interface.frame_source) == ("norm1000", "model.pred_frame")
    with pytest.raises(UserError, match="model.pred_frame: 'percent' is not a frame"):
        resolve_interface(_config("qwen3_vl"), pred_frame="percent")


@pytest.mark.parametrize("box", [[0, 0, 5000, 5000], [-900, -900, 400, 400], [1e308, 0, 1e308, 10], [100, 200]])
def test_boxes_outside_the_grid_never_score_as_correct(box):
    """A policy paid on IoU tries everything: boxes far past the 0..1000 grid, negative corners, absurd values,
    the wrong arity. None of them is scored as a hit; none is exempted (None) either."""
    with RewardComposite([{"name": "iou"}, {"name": "accuracy"}], workers=0) as rc:
        result = rc.score([f"<answer>{box}</answer>"], _columns(1, "norm1000"))
    assert result.components["iou"][0] is not None and result.components["iou"][0] < 0.5
    assert result.components["accuracy"] == [0.0]


def test_a_model_frame_that_is_no_frame_is_unscorable_not_a_score():
    with RewardComposite([{"name": "iou"}], workers=0) as rc:
        result = rc.score([f"<answer>{GOLD}</answer>"], _columns(1, "percent"))
    assert result.components["iou"] == [None] and result.counters["iou/errors"] == 1


@pytest.mark.parametrize("family", ["gemma3", "smolvlm"])
def test_a_family_with_no_frame_is_refused_in_one_line_where_coordinates_are_read(family):
    interface = resolve_interface(_config(family))
    assert interface.pred_frame is None
    assert reads_coordinates([{"name": "accuracy"}, {"name": "format"}], {"math", "count"}) is None
    assert reads_coordinates([{"name": "iou", "kwargs": {"pred_frame": "norm1000"}}], {"grounding"}) is None
    reader = reads_coordinates([{"name": "accuracy"}], {"math", "grounding"})
    assert reader == "reward 'accuracy' on grounding samples"
    with pytest.raises(UserError) as err:
        interface.require_frame(reader)
    message = str(err.value)
    assert "\n" not in message and "model.pred_frame" in message and _config(family)["model_type"] in message
    assert reads_coordinates([{"name": "gui_action"}], set()) == "reward 'gui_action'"
    assert reads_coordinates([{"name": "curr_reft_open"}], {"detection"}) == "reward 'curr_reft_open' on detection samples"


# -- defect 2: thinking templates ----------------------------------------------------------------------------------
TEMPLATES = {  # name -> (template text, template kwargs, expected (turn_prefix, think))
    "qwen3_vl_thinking": (THINKING, {}, ("<think>\n", "open")),
    "qwen3_trl": (_template("trl__qwen3.jinja"), {}, ("", "none")),
    "qwen3_trl_thinking_on": (_template("trl__qwen3.jinja"), {"enable_thinking": True}, ("", "none")),
    "qwen3_trl_thinking_off": (_template("trl__qwen3.jinja"), {"enable_thinking": False},
                               ("<think>\n\n</think>\n\n", "closed")),
    "qwen3_original_thinking_off": (_template("llamacpp__Qwen-Qwen3-0.6B.jinja"), {"enable_thinking": False},
                                    ("<think>\n\n</think>\n\n", "closed")),
    "qwen3_original": (_template("llamacpp__Qwen-Qwen3-0.6B.jinja"), {}, ("", "none")),
    "qwen3_vl_instruct": ((FOLDERS["qwen3_vl"] / "chat_template.json").read_text(), {}, ("", "none")),
    "qwen2_5_vl": ((FOLDERS["qwen2_5_vl"] / "chat_template.json").read_text(), {}, ("", "none")),
    "qwen2_vl_instruct": ((REAL / "qwen2_vl" / "Qwen2-VL-2B-Instruct" / "chat_template.json").read_text(), {},
                          ("", "none")),
    "gemma3": ((FOLDERS["gemma3"] / "chat_template.json").read_text(), {}, ("", "none")),
    "smolvlm": ((FOLDERS["smolvlm"] / "chat_template.json").read_text(), {}, ("", "none")),
}


def _text_of(template: str) -> str:
    return json.loads(template)["chat_template"] if template.lstrip().startswith("{\n") else template


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_generation_prompt_of_each_real_template_is_rendered_to_find_an_opened_block(tokenizer, name):
    template, kwargs, expected = TEMPLATES[name]
    assert turn_prefix_of(_with_template(tokenizer, _text_of(template)), kwargs) == expected


WHOLE = "The sum is 2 + 2 = 4.\n</think>\n\n<answer>4</answer>"  # a Qwen3-VL-Thinking completion: no <think>


def _thinking_interface(tokenizer) -> ModelInterface:
    return resolve_interface(_config("qwen3_vl"), _with_template(tokenizer, THINKING))


def test_thinking_completions_score_as_the_model_whole_turn(tokenizer):
    interface = _thinking_interface(tokenizer)
    specs = [{"name": "format"}, {"name": "hard_format_accuracy"}, {"name": "accuracy"}]
    columns = {"answer": ["4"], "task": ["count"]}
    with RewardComposite(specs, workers=0) as rc:
        old = rc.score([WHOLE], columns)
        new = rc.score([interface.whole_turn(WHOLE)], columns)
    # The defect: every completion of a Thinking model scored 0 on the strict format (Vision-R1's only reward).
    assert old.components == {"format": [0.0], "hard_format_accuracy": [0.0], "accuracy": [1.0]}
    assert new.components == {"format": [1.0], "hard_format_accuracy": [1.0], "accuracy": [1.0]}
    gold = {"action_type": "click", "bbox": [0, 0, 1000, 1000]}
    click = "tap it\n</think>\n<answer>[{'action': 'click', 'coordinate': [500, 500]}]</answer>"
    with RewardComposite([{"name": "gui_action"}], workers=0) as rc:
        gui = rc.score([click, interface.whole_turn(click)],
                       {"answer": [gold] * 2, "image_size": [(1000, 1000)] * 2, "model_frame": ["norm1000"] * 2})
    assert gui.components["gui_action"] == [2.0, 3.0]  # the format term: 0 for the bare completion, 1 for the turn


@pytest.mark.parametrize("completion", [
    "<think>I open it again</think>\n<answer>4</answer>",  # its own second <think> after the opened one
    "r</think> more </think><answer>4</answer>",  # two closing tags
    "<answer>4</answer> then thinking",  # the answer inside the still-open reasoning block
    "reasoning <answer>4</answer>",  # never closes the block the template opened
])
def test_a_thinking_policy_is_not_paid_for_a_malformed_turn(tokenizer, completion):
    interface = _thinking_interface(tokenizer)
    turn = interface.whole_turn(completion)
    with RewardComposite([{"name": "format"}, {"name": "hard_format_accuracy"}], workers=0) as rc:
        result = rc.score([turn], {"answer": ["4"], "task": ["count"]})
    assert result.components == {"format": [0.0], "hard_format_accuracy": [0.0]}


def test_an_answer_left_inside_the_opened_block_is_no_answer(tokenizer):
    """The old code read `reasoning <answer>4</answer>` (no tag at all in the completion) as an answer outside any
    reasoning and paid accuracy; in the model's turn it sits inside the open <think>."""
    interface = _thinking_interface(tokenizer)
    with RewardComposite([{"name": "accuracy"}], workers=0) as rc:
        result = rc.score(["reasoning <answer>4</answer>", interface.whole_turn("reasoning <answer>4</answer>")],
                          {"answer": ["4"] * 2, "task": ["count"] * 2})
    assert result.components["accuracy"] == [1.0, 0.0]


def test_a_closed_block_from_enable_thinking_false_is_part_of_the_turn(tokenizer):
    tokenizer.chat_template = _template("trl__qwen3.jinja")
    interface = resolve_interface({"model_type": "qwen3"}, tokenizer, template_kwargs={"enable_thinking": False})
    with RewardComposite([{"name": "format"}], workers=0) as rc:
        result = rc.score([interface.whole_turn("<answer>4</answer>"),
                           interface.whole_turn("<think>more</think><answer>4</answer>")], {"answer": ["4"] * 2})
    assert result.components["format"] == [1.0, 0.0]  # a second reasoning block after the closed one is malformed


@pytest.mark.parametrize("name", [n for n, (_, _, expected) in TEMPLATES.items() if expected == ("", "none")])
def test_templates_that_open_nothing_leave_completions_unchanged(tokenizer, name):
    template, kwargs, _ = TEMPLATES[name]
    interface = resolve_interface({}, _with_template(tokenizer, _text_of(template)), template_kwargs=kwargs)
    assert interface.whole_turn("<think>r</think><answer>4</answer>") == "<think>r</think><answer>4</answer>"


# -- `mmrl reward score` on a run's saved samples -------------------------------------------------------------------
def _score_samples(tmp_path, rows, capsys, *extra, interface=None):
    from mmrl.cli import main

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    if interface is not None:
        (run / "model_interface.json").write_text(json.dumps(interface))
    path = run / "samples" / "step-2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["reward", "score", "--workers", "0", "--reward", "iou", "--input", str(path), *extra]) == 0
    out, err = capsys.readouterr()
    return [json.loads(line)["iou"] for line in out.splitlines()[:-1]], err


def test_reward_score_on_a_qwen3_vl_run_samples_reads_boxes_in_the_run_frame(tmp_path, capsys):
    """A Qwen3-VL run's samples rescored offline: the 0..1000 box that the run paid 1.0 used to score ~0 (the rows
    had no sizes and `mmrl reward score` knew no frame). The trainer now writes the reward columns; an older file is
    read in the frame its run recorded in model_interface.json, or one line says which rule reads it."""
    from types import SimpleNamespace

    from mmrl.rl.trainer import GRPOLoop

    sample = Sample(id="g", prompt="p", answer=GOLD, task="grounding", image_size=IMAGE, input_size=INPUT)
    group = SimpleNamespace(sample=sample, texts=[f"<answer>{IN_FRAME['norm1000']}</answer>"],
                            rewards=[1.0], components={"iou": [1.0]})
    batch = SimpleNamespace(groups=[SimpleNamespace(group=group, advantages=[0.0])])  # a TrainingBatch's fields
    written = []
    trainer = SimpleNamespace(cfg=SimpleNamespace(trainer=SimpleNamespace(sample_steps=1), env=SimpleNamespace(name=None)),
                              interface=resolve_interface(_config("qwen3_vl")),
                              run=SimpleNamespace(logger=SimpleNamespace(write_samples=lambda s, r: written.extend(r))))
    GRPOLoop._maybe_samples(trainer, 2, batch)
    rows = json.loads(json.dumps(written))  # as the run's file holds them
    assert _score_samples(tmp_path / "new", rows, capsys)[0] == [pytest.approx(1.0)]
    old_rows = [{k: r[k] for k in ("id", "answer", "completion", "reward", "image_size", "input_size")} for r in rows]
    scores, err = _score_samples(tmp_path / "old", old_rows, capsys, interface={"pred_frame": "norm1000"})
    assert scores == [pytest.approx(1.0)] and "norm1000" in err and "model_interface.json" in err
    scores, err = _score_samples(tmp_path / "bare", old_rows, capsys)
    assert scores[0] < 0.5 and len(err.strip().splitlines()) == 2 and "--pred-frame" in err  # said, + the summary
    assert _score_samples(tmp_path / "flag", old_rows, capsys, "--pred-frame", "norm1000")[0] == [pytest.approx(1.0)]
    bare_lines = [{"completion": r["completion"]} for r in rows]  # no other column: --pred-frame still fills one
    assert _score_samples(tmp_path / "only", bare_lines, capsys, "--pred-frame", "norm1000")[0] == [None]


@pytest.mark.parametrize("kwargs", ["{add_generation_prompt: false}", "{tokenize: true, enable_thinking: false}"])
def test_chat_template_kwargs_that_are_render_arguments_are_refused_in_one_line(kwargs, capsys):
    """They used to reach apply_chat_template next to mmrl's own arguments: a TypeError traceback at the first
    prompt (add_generation_prompt), or token ids where the prompt's text was expected (tokenize)."""
    from mmrl.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "tests" / "grpo_tiny.yaml"
    assert main(["train", str(config), f"data.chat_template_kwargs={kwargs}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.chat_template_kwargs" in err and "enable_thinking" in err


def test_eval_refuses_a_task_routed_to_a_coordinate_reward_with_a_model_of_unknown_frame():
    """eval.reward_for_task can send a task of any name to `iou`: it reads boxes like a grounding item does (before,
    such items were read by the bare-call rule for a model with no frame, silently)."""
    from mmrl.config.data import DataConfig
    from mmrl.config.workflow import EvalConfig
    from mmrl.eval.evaluate import evaluate

    items = [Sample(id="b", prompt="p", answer=GOLD, task="boxes", image_size=IMAGE, input_size=INPUT)]
    unknown = resolve_interface(_config("gemma3"))
    with pytest.raises(UserError, match="model.pred_frame"):
        evaluate(None, None, items, EvalConfig(reward_for_task={"boxes": "iou"}), DataConfig(), None,
                 interface=unknown)


_BASE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if m.content is string else "
         "m.content[0].text }}<|im_end|>\n{% endfor %}")


def test_a_template_that_wants_a_system_message_is_still_probed(tokenizer):
    """A template that raises without a system message (the run gives one with data.system_prompt) opens <think>:
    the probe with a user turn alone failed and the run scored every Thinking completion without its <think>."""
    template = ("{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}" + _BASE +
                "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    assert turn_prefix_of(_with_template(tokenizer, template)) == ("<think>\n", "open")


def test_a_block_opened_with_another_tag_is_said_not_silently_ignored(tokenizer, caplog):
    template = _BASE + "{% if add_generation_prompt %}<|im_start|>assistant\n<reasoning>\n{% endif %}"
    with caplog.at_level("WARNING", logger="mmrl.models.interface"):
        assert turn_prefix_of(_with_template(tokenizer, template)) == ("", "none")
    assert len(caplog.records) == 1 and "<reasoning>" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrl.models.interface"):  # a role marker that is a special token: quiet
        turn_prefix_of(_with_template(tokenizer, _BASE + "{% if add_generation_prompt %}<|im_start|>{% endif %}"))
        turn_prefix_of(_with_template(tokenizer, THINKING))
    assert not caplog.records


def _fake_endpoint(replies: list[dict], chunks: list[dict]):
    """An OpenAIBackend whose client answers with these real openai reply objects (vLLM-shaped)."""
    from types import SimpleNamespace

    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    from mmrl.generation.http import OpenAIBackend

    def create(stream=False, **_):
        if stream:
            return [ChatCompletionChunk.model_validate({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                                       "model": "m", "choices": [{"index": 0, **c}]}) for c in chunks]
        return ChatCompletion.model_validate({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                              "choices": [{"index": i, "finish_reason": "stop", "message": m}
                                                          for i, m in enumerate(replies)]})

    backend = OpenAIBackend("http://127.0.0.1:9/v1", served_model="m")
    backend.client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    return backend


def test_an_endpoint_reply_of_a_thinking_model_is_read_as_its_whole_turn():
    """A vLLM server for Qwen3-VL-Thinking returns `reasoning</think>...` (its prompt opened <think>), or with a
    reasoning parser the reasoning apart from the content: the builders used to keep a turn without <think> (the cold
    start rejected every reply as no_think; the rejection builder wrote SFT targets with the reasoning cut off)."""
    from mmrl.generation import Prompt, SamplingParams

    replies = [{"role": "assistant", "content": "r</think>\n\n<answer>4</answer>"},
               {"role": "assistant", "content": "\n\n<answer>4</answer>", "reasoning_content": "r"},
               {"role": "assistant", "content": "<answer>4</answer>"}]
    chunks = [{"delta": {"role": "assistant", "content": ""}}, {"delta": {"reasoning_content": "r"}},
              {"delta": {"reasoning_content": "s"}}, {"delta": {"content": "<answer>4</answer>"}},
              {"delta": {}, "finish_reason": "stop"}]
    backend = _fake_endpoint(replies, chunks)
    texts = [c.text for c in backend.generate([Prompt.from_question("2+2?")], SamplingParams(n=3))[0]]
    assert texts == ["<think>\nr</think>\n\n<answer>4</answer>", "<think>\nr\n</think>\n\n<answer>4</answer>",
                     "<answer>4</answer>"]  # a turn with no reasoning block stays as it is
    assert "".join(backend.stream(Prompt.from_question("2+2?"), SamplingParams())) == \
        "<think>\nrs\n</think>\n\n<answer>4</answer>"
    with RewardComposite([{"name": "format"}], workers=0) as rc:
        assert rc.score(texts[:2], {"answer": ["4"] * 2}).components["format"] == [1.0, 1.0]
    from mmrl.models.interface import reply_turn

    assert reply_turn("", "cut off mid-", truncated=True) == "<think>\ncut off mid-"  # never closed for it


def test_evaluate_reads_generations_in_the_model_frame(monkeypatch, tmp_path):
    """evaluate() itself (not only score_generations) hands the model's frame to the scoring: a Qwen3-VL's correct
    0..1000 box and click are right, and the report names the frame."""
    import mmrl.eval.evaluate as evaluate_module
    from mmrl.config.data import DataConfig
    from mmrl.config.workflow import EvalConfig
    from mmrl.generation import Completion

    box, click = IN_FRAME["norm1000"], [200, 300]
    answers = {"g": f"<answer>{box}</answer>", "u": f"<answer>[{{'action': 'click', 'coordinate': {click}}}]</answer>"}
    monkeypatch.setattr(evaluate_module, "generate_completions", lambda m, p, items, *a, **k: [
        [Completion(token_ids=[1], text=answers[s.id], finish_reason="stop")] for s in items])
    items = [Sample(id="g", prompt="p", answer=GOLD, task="grounding", image_size=IMAGE, input_size=INPUT),
             Sample(id="u", prompt="p", answer={"action_type": "click", "bbox": GOLD}, task="gui", image_size=IMAGE,
                    input_size=INPUT)]
    report = evaluate_module.evaluate(None, None, items, EvalConfig(), DataConfig(), tmp_path, progress=False,
                                      interface=resolve_interface(_config("qwen3_vl")))
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["scores"] for r in records] == [[1.0], [1.0]]
    assert "norm1000" in json.dumps(report)


def test_an_sft_response_with_reasoning_under_a_closed_block_says_what_to_do():
    from mmrl.errors import DataError
    from mmrl.models.interface import sft_continuation

    assert sft_continuation("<think>\n</think>\n<answer>4</answer>", "<think>\n\n</think>\n\n", "s") == \
        "<answer>4</answer>"
    with pytest.raises(DataError, match="enable_thinking") as err:
        sft_continuation("<think>r</think><answer>4</answer>", "<think>\n\n</think>\n\n", "s")
    assert "\n" not in str(err.value).replace("\\n", "")


def test_eval_of_a_run_checkpoint_reads_boxes_in_the_frame_the_run_was_given(tmp_path, capsys):
    """A Qwen3-VL run trained with model.pred_frame=input_pixel (its prompts asked for pixels): `mmrl eval --model
    RUN/checkpoints/step-N` read its boxes on the 0..1000 grid of the family default, silently."""
    import argparse

    from mmrl.commands.evaluate import build_eval_config

    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    checkpoint.mkdir(parents=True)
    (tmp_path / "run" / "model_interface.json").write_text(json.dumps(
        {"model_type": "qwen3_vl", "pred_frame": "input_pixel", "frame_source": "model.pred_frame"}))

    def config(*overrides):
        args = argparse.Namespace(config=None, overrides=list(overrides), model=str(checkpoint), k=None, limit=None,
                                  data=["eval.jsonl"], out=None)
        return build_eval_config(args)[0]

    assert config().model.pred_frame == "input_pixel" and "model.pred_frame=input_pixel" in capsys.readouterr().err
    assert config("model.pred_frame=auto").model.pred_frame == "auto"  # the user's word wins
    (tmp_path / "run" / "model_interface.json").write_text(json.dumps(
        {"model_type": "qwen3_vl", "pred_frame": "norm1000", "frame_source": "model_type 'qwen3_vl'"}))
    assert config().model.pred_frame == "auto"  # the family default: decided from the checkpoint's files as always


@pytest.mark.parametrize("frame", ["auto", "norm_1000", "Norm1000"])
def test_a_reward_pred_frame_that_is_no_frame_is_refused_in_one_line(frame, capsys):
    """It made every item of the reward None (an error per completion): a run that learned nothing from it."""
    from mmrl.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "tests" / "grpo_tiny.yaml"
    assert main(["train", str(config), f"rewards=[{{name: iou, kwargs: {{pred_frame: {frame}}}}}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kwargs.pred_frame" in err and "norm1000" in err
    assert main(["reward", "score", "--reward", "iou", "--kwargs", json.dumps({"pred_frame": frame}), "--input",
                 str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrl reward: error: --reward: reward 'iou': kwargs.pred_frame") and len(err.splitlines()) == 1


def test_a_template_that_opens_think_under_the_run_system_prompt_is_probed_with_it(tokenizer):
    """Some templates open the reasoning block only when the system prompt asks for it ("detailed thinking on"): the
    probe carries the run's data.system_prompt, so what it reads is what the run's prompts end with."""
    template = (_BASE + "{% if add_generation_prompt %}<|im_start|>assistant\n{% if messages[0].role == 'system' and "
                "'thinking on' in (messages[0].content if messages[0].content is string else "
                "messages[0].content[0].text) %}<think>\n{% endif %}{% endif %}")
    owner = _with_template(tokenizer, template)
    assert turn_prefix_of(owner) == ("", "none")
    assert turn_prefix_of(owner, system_prompt="detailed thinking on") == ("<think>\n", "open")
    interface = resolve_interface(_config("qwen3_vl"), owner, system_prompt="detailed thinking on")
    assert interface.turn_prefix == "<think>\n"
