"""Issue 25's two defects through the real code paths on the tiny model: the Qwen3-VL-Thinking chat template
(tests/fixtures/real_models/qwen3_vl_thinking, its generation prompt opens `<think>`) put on the tiny model's
processor, and the tiny-gemma3 preset (a family with no box frame).

- rollouts: rewards and logged samples see the model's whole turn (the opened `<think>` first), token ids stay the
  sampled ones;
- eval and `mmrl serve` answer and record whole turns;
- SFT under the Thinking template and under a QwQ-style template (it drops the reasoning of assistant turns, so it
  cannot render the response after the opened prompt: the old code refused every record) trains exactly the tokens
  the model writes after the opened tag, the tag once;
- GRPO on a model with no frame refuses a coordinate reward in one line; `model.pred_frame` lets it run and the run
  directory records what was used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrl.config import load_config
from mmrl.data.collate import IGNORE_INDEX, encode_one
from mmrl.data.sample import Sample
from mmrl.errors import DataError, UserError
from mmrl.eval.evaluate import evaluate
from mmrl.generation import SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.models.interface import interface_of
from mmrl.models.loading import load_policy
from mmrl.rewards.composite import RewardComposite
from mmrl.rewards.format import format_reward
from mmrl.rl.experience import rollout_groups
from mmrl.rl.stages import StageSchedule

ROOT = Path(__file__).resolve().parents[2]
THINKING = json.loads((ROOT / "tests" / "fixtures" / "real_models" / "qwen3_vl_thinking" / "chat_template.json")
                      .read_text())["chat_template"]
# A QwQ-style template written for this test: the generation prompt opens <think>, and an assistant message is
# rendered without its reasoning (the text after its last </think>), as QwQ's and DeepSeek-R1's templates do.
DROPS_REASONING = (
    "{%- for message in messages %}"
    "{%- set text = message.content if message.content is string else message.content | selectattr('type', "
    "'equalto', 'text') | map(attribute='text') | join('') %}"
    "{%- if message.role == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' + text.split('</think>')[-1].lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message.role + '\\n' + text + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def thinking():
    """The tiny policy with the real Qwen3-VL-Thinking chat template (its own copy: the template is changed)."""
    torch.manual_seed(0)
    loaded = load_policy(load_config(None, ["model.dtype=fp32"]).model, for_training=False)
    loaded.processor.chat_template = THINKING
    loaded.processor.tokenizer.chat_template = THINKING
    return loaded.model, loaded.processor


@pytest.fixture(scope="module")
def red_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (56, 56), "red").save(path)
    return path


def test_the_thinking_template_is_found_from_the_processor(thinking):
    interface = interface_of(*thinking)
    assert (interface.turn_prefix, interface.think, interface.pred_frame) == ("<think>\n", "open", "input_pixel")


def test_data_chat_template_kwargs_reach_the_prompt_and_the_interface(thinking):
    """Qwen3's template with `data.chat_template_kwargs={enable_thinking: false}`: the prompts mmrl renders and the
    turn prefix it reads off the template agree (a closed empty block), through a backend's data config."""
    from mmrl.models.interface import interface_of_backend

    model, processor = thinking
    processor.chat_template = (ROOT / "tests" / "fixtures" / "real_models" / "templates" / "trl__qwen3.jinja").read_text()
    try:
        for kwargs, prefix in (("{enable_thinking: false}", "<think>\n\n</think>\n\n"), ("{}", "")):
            data_cfg = load_config(None, [f"data.chat_template_kwargs={kwargs}"]).data
            assert interface_of_backend(make_backend(model, processor, data_cfg=data_cfg)).turn_prefix == prefix
            prompt = processor.tokenizer.decode(encode_one(processor, Sample(id="q", prompt="2+2?", answer="4"),
                                                           data_cfg)["input_ids"][0])
            assert prompt.endswith("<|im_start|>assistant\n" + prefix)
            from mmrl.generation.vllm_backend import _prompt_inputs  # vLLM's prompt (CPU side, no engine)

            assert _prompt_inputs(Sample(id="q", prompt="2+2?", answer="4"), processor, data_cfg)["prompt"].endswith(
                "<|im_start|>assistant\n" + prefix)
    finally:
        processor.chat_template = THINKING


def test_rollout_rewards_and_logged_samples_see_the_whole_turn(thinking, red_image):
    model, processor = thinking
    cfg = load_config(None, ["rollout.group_size=3", "rollout.max_completion_length=6", "data.min_pixels=3136",
                             "data.max_pixels=3136"])
    stage = StageSchedule(cfg.stages, cfg).stage_at(0)
    backend = make_backend(model, processor, data_cfg=cfg.data)
    sample = Sample(id="s", prompt="<image>What color?", answer="red", task="text", images=[str(red_image)])
    interface = interface_of(model, processor)
    with RewardComposite([{"name": "format"}, {"name": "accuracy"}], workers=0) as composite:
        (group,), _ = rollout_groups(cfg, stage, [sample], processor, backend, composite,
                                     torch.Generator().manual_seed(0), cfg.data, interface=interface)
    sampled = [backend.decoder.text(ids[mask.bool()].tolist())
               for ids, mask in zip(group.completion_ids, group.completion_mask)]
    assert group.texts == ["<think>\n" + text for text in sampled]  # the sampled tokens stay the sampled ones
    assert group.components["format"] == format_reward(group.texts)


def test_eval_scores_and_records_whole_turns(thinking, red_image, tmp_path):
    model, processor = thinking
    cfg = load_config(None, ["eval.max_new_tokens=4", "data.min_pixels=3136", "data.max_pixels=3136"])
    sample = Sample(id="e", prompt="<image>What color?", answer="red", task="text", images=[str(red_image)])
    report = evaluate(model, processor, [sample], cfg.eval, cfg.data, tmp_path, progress=False)
    assert report["turn_prefix"] == "<think>\n"
    record = json.loads((tmp_path / "generations.jsonl").read_text().splitlines()[0])
    assert record["generations"][0].startswith("<think>\n")


def test_serve_answers_and_streams_the_whole_turn(thinking):
    model, processor = thinking
    backend = make_backend(model, processor)
    TestClient = pytest.importorskip("fastapi.testclient").TestClient  # the serve extra; the GPU image lacks it
    from mmrl.generation.server import create_app

    client = TestClient(create_app(backend, "tiny-thinking"))
    body = {"messages": [{"role": "user", "content": "What color?"}], "max_tokens": 4, "temperature": 0}
    answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    from mmrl.generation.types import Prompt

    (completion,) = backend.generate([Prompt([{"role": "user", "content": "What color?"}])],
                                     SamplingParams(max_new_tokens=4, temperature=0.0))[0]
    assert answer == "<think>\n" + completion.text
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == answer
    # vLLM's per-request template variables (Qwen3's enable_thinking) are not honoured: refused, never ignored
    refused = client.post("/v1/chat/completions", json={**body, "chat_template_kwargs": {"enable_thinking": False}})
    assert refused.status_code == 400 and "chat_template_kwargs" in refused.json()["error"]["message"]


def _trained_text(processor, encoded) -> tuple[str, str]:
    tokenizer = processor.tokenizer
    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    return tokenizer.decode(ids), tokenizer.decode(ids[labels != IGNORE_INDEX])


@pytest.mark.parametrize("template", ["thinking", "drops_reasoning"])
def test_sft_trains_the_tokens_after_the_opened_tag_once(thinking, template):
    _model, processor = thinking
    processor.chat_template = THINKING if template == "thinking" else DROPS_REASONING
    try:
        data_cfg = load_config(None).data
        sample = Sample(id="t", prompt="What color?", answer="red", task="text",
                        response="<think>I see red.</think><answer>red</answer>")
        full, trained = _trained_text(processor, encode_one(processor, sample, data_cfg, with_response=True))
        prompt = processor.tokenizer.decode(encode_one(processor, sample, data_cfg)["input_ids"][0])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n")
        assert full.count("<think>") == 1 and full.startswith(prompt)  # the opened tag once, in the prompt
        assert "<think>" not in trained and trained.startswith("I see red.") and trained.endswith("<|im_end|>")
        assert "</think>" in trained and "<answer>red</answer>" in trained
        # A doubled reasoning block; a response that is not the whole turn (no reasoning block at all).
        for response in ("<think>a</think><think>b</think><answer>red</answer>", "<answer>red</answer>"):
            hostile = Sample(id="h", prompt="What color?", answer="red", task="text", response=response)
            if template == "thinking":  # the real template renders any response itself (its own rule)
                encode_one(processor, hostile, data_cfg, with_response=True)
                continue
            with pytest.raises(DataError, match="sample h: ") as err:
                encode_one(processor, hostile, data_cfg, with_response=True)
            assert "\n" not in str(err.value)
    finally:
        processor.chat_template = THINKING


def _grounding_data(tmp_path: Path) -> Path:
    Image.new("RGB", (56, 56), "white").save(tmp_path / "w.png")
    row = {"id": "g0", "images": ["w.png"], "prompt": "<image>Where is the box?", "answer": [10, 10, 30, 30],
           "task": "grounding"}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path / "train.jsonl"


def _trainer_cfg(data: Path, out: Path, *extra: str):
    overrides = [f"data.train={data}", f"trainer.output_dir={out}", "trainer.report_to=[jsonl]",
                 "trainer.progress=false", "model.name_or_path=tiny-gemma3", "model.dtype=fp32", "trainer.device=cpu",
                 "trainer.max_steps=1", "trainer.prompts_per_step=1", "rollout.group_size=2",
                 "rollout.max_completion_length=2", "rewards=[{name: iou}]", *extra]
    return load_config(ROOT / "configs" / "tests" / "grpo_tiny.yaml", overrides)


def test_grpo_refuses_a_coordinate_reward_on_a_model_with_no_frame_then_records_the_given_one(tmp_path):
    from mmrl.rl.trainer import GRPOLoop

    data = _grounding_data(tmp_path)
    with pytest.raises(UserError) as err:
        GRPOLoop(_trainer_cfg(data, tmp_path / "refused"))
    message = str(err.value)
    assert "reward 'iou'" in message and "model.pred_frame" in message and "gemma3" in message
    assert "\n" not in message
    # Trained on text with a text reward, but evaluated on grounding items: refused now, not at the first eval step
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"id": "t", "prompt": "2+2?", "answer": "4", "task": "math"}) + "\n")
    with pytest.raises(UserError, match=r"eval \(data.eval\) on grounding items.*model.pred_frame"):
        GRPOLoop(_trainer_cfg(text, tmp_path / "refused", "rewards=[{name: format}]", f"data.eval={data}",
                                 "trainer.eval_steps=1"))
    # What the line asks for, in the same directory: the refused run left nothing there that blocks it
    trainer = GRPOLoop(_trainer_cfg(data, tmp_path / "refused", "model.pred_frame=norm1000"))
    try:
        recorded = json.loads((tmp_path / "refused" / "model_interface.json").read_text())
        assert (recorded["pred_frame"], recorded["frame_source"]) == ("norm1000", "model.pred_frame")
        assert recorded["model_type"] == "gemma3" and recorded["turn_prefix"] == ""
    finally:
        trainer.run.close()


@pytest.mark.parametrize("preset, frame, note", [("tiny-qwen3-vl", "norm1000", ""),
                                                 ("tiny-gemma3", "input_pixel", "model_type 'gemma3'")])
def test_the_demos_read_boxes_in_the_model_frame_or_say_what_they_assumed(preset, frame, note):
    """The grounding and GUI demos took model-input pixels for every family but Qwen2-VL: a Qwen3-VL box was drawn
    and scored in the wrong place. A family with no frame is read in input pixels, and the page says so."""
    from demos._model import DemoModel

    model = DemoModel(preset, device="cpu")
    assert model.box_frame == frame
    assert (note in model.frame_note) and (bool(model.frame_note) == bool(note))


def test_the_rejection_builder_writes_whole_turns_of_a_thinking_policy(tiny_model_dir, tmp_path):
    """A policy folder whose chat template opens <think> (the tiny model's files with the real Qwen3-VL-Thinking
    template): the sampled texts the builder caches and would write as SFT targets start with the opened tag, once."""
    import shutil

    from mmrl.cli import main

    policy = tmp_path / "thinking-policy"
    shutil.copytree(tiny_model_dir, policy)
    (policy / "chat_template.jinja").write_text(THINKING)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "q", "prompt": "2+2?", "answer": "4", "task": "count"}) + "\n")
    out = tmp_path / "rs"
    assert main(["build-data", "rejection", "--model", str(policy), "--data", str(data), "--k", "2",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    (entry,) = [json.loads(line) for line in (out / "cache.jsonl").read_text().splitlines()]
    assert len(entry["texts"]) == 2 and all(t.startswith("<think>") for t in entry["texts"])


def test_the_rejection_builder_asks_an_endpoint_for_its_frame_before_sampling(tmp_path, capsys):
    from mmrl.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "g", "prompt": "Where?", "answer": [1, 2, 3, 4], "task": "grounding"}) + "\n")
    argv = ["build-data", "rejection", "--model", "http://127.0.0.1:9/v1", "--data", str(data), "--out",
            str(tmp_path / "rs")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grounding items" in err[0] and "--pred-frame" in err[0]


def test_the_cold_start_reasoner_keeps_the_think_its_template_opened(tiny_model_dir, tmp_path):
    """A reasoning stage whose model's template opens <think> replies `r</think><answer>..`: that is a whole,
    well-formed turn (the old code rejected every such reply as no_think)."""
    import shutil

    from data_pipelines.cold_start.build import StageRunner, attach_backends
    from data_pipelines.cold_start.config import StageConfig
    from mmrl.generation import Completion, Prompt

    policy = tmp_path / "thinking-reasoner"
    shutil.copytree(tiny_model_dir, policy)
    (policy / "chat_template.jinja").write_text(THINKING)
    runner = StageRunner("reason", StageConfig(model=str(policy), attempts=1), "{question}")
    attach_backends({"reason": runner})
    reply = Completion(token_ids=[1, 2], text="r</think>\n<answer>4</answer>", finish_reason="stop")
    runner.backend = type("Stub", (), {"generate": lambda self, prompts, params: [[reply]]})()
    result = runner.run(Prompt.from_question("2+2?"))
    assert result["ok"] and result["text"] == "<think>\nr</think>\n<answer>4</answer>"


def test_the_rejection_builder_checks_grounding_answers_in_the_policy_frame(tmp_path):
    """A Qwen3-VL policy's correct 0..1000 box is a correct answer (read as pixels it was not, and every grounding
    item was rejected)."""
    import argparse

    from data_pipelines.rejection import _correct, _model_frame
    from mmrl.data.sample import Sample

    folder = ROOT / "tests" / "fixtures" / "real_models" / "qwen3_vl_instruct" / "Qwen3-VL-4B-Instruct"
    sample = Sample(id="g", prompt="Where?", answer=[100, 100, 300, 200], task="grounding", image_size=(1000, 500),
                    input_size=(504, 252))
    frame = _model_frame([sample], argparse.Namespace(model=str(folder), pred_frame="auto"))
    assert frame == "norm1000"
    assert _correct("<think>r</think><answer>[100, 200, 300, 400]</answer>", "stop", sample, frame) is True
    assert _model_frame([sample], argparse.Namespace(model=str(folder), pred_frame="input_pixel")) == "input_pixel"


def test_rollout_rewards_read_boxes_in_the_model_frame(thinking, red_image, tmp_path):
    """The GRPO reward columns carry the model's frame (the box rewards' default): a Qwen3-VL policy's 0..1000 boxes
    are read on that grid during training, not only in eval."""
    import dataclasses

    model, processor = thinking
    cfg = load_config(None, ["rollout.group_size=2", "rollout.max_completion_length=2", "data.min_pixels=3136",
                             "data.max_pixels=3136"])
    stage = StageSchedule(cfg.stages, cfg).stage_at(0)
    reward = tmp_path / "frame_reward.py"
    reward.write_text("def frame(completions, model_frame=None, **_):\n"
                      "    return [1.0 if f == 'norm1000' else 0.0 for f in model_frame]\n")
    sample = Sample(id="s", prompt="<image>Where?", answer=[1, 1, 4, 4], task="grounding", images=[str(red_image)])
    interface = dataclasses.replace(interface_of(model, processor), pred_frame="norm1000")
    with RewardComposite([{"name": f"{reward}:frame"}], workers=0) as composite:
        (group,), _ = rollout_groups(cfg, stage, [sample], processor, make_backend(model, processor, data_cfg=cfg.data),
                                     composite, torch.Generator().manual_seed(0), cfg.data, interface=interface)
    assert list(group.components[f"{reward}:frame"]) == [1.0, 1.0]


def test_data_system_prompt_reaches_the_interface_probe(thinking):
    """A template that opens <think> only under a system prompt asking for it: the backend's interface (serve, the
    builders) reads the prefix the run's prompts really end with."""
    from mmrl.models.interface import interface_of_backend

    model, processor = thinking
    processor.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if m.content is string else "
        "m.content[-1].text }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if messages[0].role == 'system' %}<think>\n{% endif %}{% endif %}")
    try:
        data_cfg = load_config(None, ["data.system_prompt=think first"]).data
        assert interface_of_backend(make_backend(model, processor, data_cfg=data_cfg)).turn_prefix == "<think>\n"
        prompt = processor.tokenizer.decode(encode_one(processor, Sample(id="q", prompt="2+2?", answer="4"),
                                                       data_cfg)["input_ids"][0])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    finally:
        processor.chat_template = THINKING
