"""The model demos prompt a checkpoint as it was trained (its run's system prompt, suffix and image size, through
training's own `build_messages`), infer the task of a gold as the data loader does, and show uploads at a readable
size. The checkpoints are real ones (tests/conftest.py): `colour_checkpoint` SFT-s the tiny preset with a template of its
own, and `quickstart_checkpoint` is the quickstart's cold start, which names colours."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.unit.demo_assets import COLOUR_QUESTION, COLOUR_SUFFIX, COLOUR_SYSTEM, colour_square

gr = pytest.importorskip("gradio")


def test_the_template_is_read_from_the_run_of_the_checkpoint_and_the_stage_of_its_step(tmp_path):
    from mmrl.config import load_config
    from mmrl.config.loader import save_resolved
    from mmrl.generation.trained import trained_template

    cfg = load_config(None, ["data.min_pixels=3136", "data.max_pixels=3136", "data.prompt_suffix=' Be brief.'",
                             "stages=[{name: short, steps: 2, prompt_suffix: ' One word.'}, {name: long, steps: 3}]"])
    cfg.data.system_prompt = "You are a careful observer: think, then answer."
    run = tmp_path / "grpo"
    save_resolved(cfg, run)
    for step in (2, 5):
        (run / "checkpoints" / f"step-{step}").mkdir(parents=True)
    early, late = (trained_template(run / "checkpoints" / f"step-{s}") for s in (2, 5))
    assert early.system_prompt == late.system_prompt == "You are a careful observer: think, then answer."
    # Step 2 was trained in the first stage, with its suffix; step 5 in the second, which has the data's.
    assert (early.prompt_suffix, late.prompt_suffix) == (" One word.", " Be brief.")
    assert early.source == run / "config.yaml" and early.data_cfg.max_pixels == 3136
    assert trained_template("tiny").source is None  # a preset has no run: nothing is made up
    (run / "config.yaml").write_text("model: [not, a, section]\n")
    broken = trained_template(run / "checkpoints" / "step-2")
    assert broken.source is None and "not readable as an mmrl config" in broken.note


def test_a_trained_checkpoint_is_prompted_with_exactly_its_training_tokens(colour_checkpoint, tmp_path):
    """The demo's prompt for a question encodes to the very ids training encoded: the run's system prompt and suffix
    (the demo added R1's system prompt instead) and its image size (56 px here; the demo resized to up to 448)."""
    from demos._model import DemoModel
    from mmrl.config import load_config
    from mmrl.data.collate import encode_one
    from mmrl.data.sample import Sample

    model = DemoModel.load(str(colour_checkpoint), device="cpu")
    assert (model.system_prompt, model.prompt_suffix) == (COLOUR_SYSTEM, COLOUR_SUFFIX)
    assert "config.yaml" in model.template_origin
    path = colour_square(tmp_path / "q.png", "green", seed=7, side=200)  # an upload larger than the training images
    image = Image.open(path).convert("RGB")
    demo = model._backend.encode(model.prompt(COLOUR_QUESTION, image))
    cfg = load_config(str(colour_checkpoint.parent.parent / "config.yaml"))
    trained = encode_one(model._backend.processor, Sample(id="q", prompt=COLOUR_QUESTION, answer="green",
                                                          images=[str(path)]), cfg.data)  # fmt: skip
    assert torch.equal(demo["input_ids"], trained["input_ids"])
    assert torch.equal(demo["pixel_values"], trained["pixel_values"]) and model.input_size(image) == (56, 56)
    # Edited in the page: an empty system prompt means none, not the run's.
    bare = model._backend.encode(model.prompt(COLOUR_QUESTION, image, system="", suffix=""))
    text = model._backend.processor.tokenizer.decode(bare["input_ids"][0])
    assert COLOUR_SYSTEM not in text and COLOUR_SUFFIX not in text


def test_chat_answers_the_colour_with_the_task_inferred_from_the_gold(quickstart_checkpoint, tmp_path):
    from demos._model import DemoModel, Sampling
    from demos.chat import chat_stream
    from tests.unit.demo_assets import quickstart_question

    model = DemoModel.load(str(quickstart_checkpoint), device="cpu")
    image, question = quickstart_question(tmp_path, "yellow")
    status, _, answer, rewards, raw = list(chat_stream(model, str(image), question, Sampling(max_new_tokens=32),
                                                       "yellow"))[-1]  # fmt: skip
    assert answer == "yellow", raw
    # 'yellow' is a text answer, as the data loader infers it: scored 1.0 (the page's default 'math' made it None).
    assert status == "done · task **text** (inferred from the gold)"
    assert {r[0]: r[1] for r in rewards} == {"format": 1.0, "accuracy": 1.0}


def test_an_upload_is_previewed_and_drawings_are_enlarged_to_a_readable_size(tmp_path):
    from demos._common import DISPLAY_SIDE, DemoInputError, preview_of
    from demos.grounding import grounding_view

    status, shown = preview_of(str(colour_square(tmp_path / "s.png", "red", seed=1)))
    assert status == "" and shown.size == (DISPLAY_SIDE, DISPLAY_SIDE)  # 56 px, shown 8x, pixels kept square
    assert shown.getpixel((DISPLAY_SIDE // 2, DISPLAY_SIDE // 2)) == (220, 30, 30)
    assert preview_of(None) == ("", None)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DemoInputError, match="not a readable image"):
        preview_of(str(tmp_path / "notes.png"))
    drawn, boxes, _ = grounding_view(Image.open(tmp_path / "s.png").convert("RGB"), "<answer>[7, 7, 49, 49]</answer>",
                                     "pixel", (56, 56), "[7, 7, 49, 49]")  # fmt: skip
    assert boxes == [[7.0, 7.0, 49.0, 49.0]] and drawn.size == (448, 448)  # boxes in image pixels, drawn at 8x
    assert drawn.getpixel((56, 200)) in ((255, 0, 0), (0, 255, 0))


def test_the_task_can_still_be_picked_and_a_wrong_one_is_refused():
    from demos._common import DemoInputError
    from demos.chat import AUTO, gold_and_task, reply_rewards

    assert gold_and_task("<answer> 4 </answer>", AUTO, question="how many cats?") == ("4", "count")
    assert gold_and_task("4", "number") == ("4", "number")
    assert {r[0]: r[1] for r in reply_rewards("<think>x</think><answer>Red</answer>", "red")}["accuracy"] == 1.0
    with pytest.raises(DemoInputError, match="task: one of"):
        gold_and_task("4", "arithmetic")
