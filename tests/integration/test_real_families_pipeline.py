"""GRPO, SFT, eval, `mmrl serve`, the vLLM backend's inputs and the rejection builder on the real families' interfaces
(tiny models built by `mmrl model build-tiny --like` from tests/fixtures/real_models, once per session): every test on
every family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrl.cli import main
from mmrl.config import load_config
from mmrl.data.collate import _takes_28_grid, encode_one
from mmrl.data.sample import Sample
from mmrl.data.vision import prepare_sample_images
from mmrl.generation.openai_format import image_to_data_url
from mmrl.models.processor import load_processor
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics
from mmrl.sft.trainer import train_sft
from tests.integration.real_families import FAMILIES, SHARES_PREFIX

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
REWARD = ROOT / "tests" / "fixtures" / "trainer" / "varied_reward.py"  # spread in every group: a real update


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two color questions with 28-pixel images and <think>/<answer> responses (SFT targets)."""
    root = tmp_path_factory.mktemp("families-data")
    rows = []
    for i, color in enumerate(("red", "blue")):
        Image.new("RGB", (28 * (i + 1), 28), color).save(root / f"im{i}.png")  # SmolVLM: other tile counts
        rows.append({"id": f"q{i}", "images": [f"im{i}.png"], "prompt": "<image>What color is the square?",
                     "answer": color, "task": "text", "response": f"<think>I see {color}.</think><answer>{color}</answer>"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "train.jsonl"


def _overrides(model: Path, data: Path, out: Path, **extra) -> list[str]:
    values = {"model.name_or_path": str(model), "data.train": str(data), "trainer.output_dir": str(out),
              "trainer.report_to": "[jsonl]", "trainer.progress": "false", "trainer.save_steps": 0,
              "trainer.sample_steps": 0, **extra}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.mark.parametrize("family", FAMILIES)
def test_grpo_step_with_real_rewards_shared_prefix_or_one_naive_line(family, real_family_models, data, tmp_path,
                                                                    caplog, monkeypatch):
    """One GRPO step (group of 2, accuracy + format rewards on the family's completions); Qwen families share the
    prompt prefix, the others run the naive forward and say so in one line."""
    import mmrl.models.prefix

    monkeypatch.setattr(mmrl.models.prefix, "_FALLBACK_NOTED", set())
    over = _overrides(real_family_models(family), data, tmp_path, **{
        "trainer.max_steps": 1, "trainer.prompts_per_step": 1, "rollout.group_size": 2,
        "rollout.max_completion_length": 3, "optimizer.lr": 1e-3, "trainer.save_final": "false",
        "rewards": f"[{{name: accuracy}}, {{name: format}}, {{name: '{REWARD}:reward'}}]"})
    with caplog.at_level("WARNING", logger="mmrl.models.prefix"):
        trainer = GRPOLoop(load_config(CONFIG, over))
        trainer.train()
    lines = [r for r in caplog.records if "naive forward" in r.getMessage()]
    assert len(lines) == (0 if SHARES_PREFIX[family] else 1)
    (row,) = read_metrics(tmp_path)
    assert row["rollout/generated_tokens"] > 0 and row["grad_norm"] > 0
    assert {"reward/accuracy", "reward/format"} <= set(row) or any("format" in k for k in row), sorted(row)


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_steps_under_the_real_template(family, real_family_models, data, tmp_path):
    over = _overrides(real_family_models(family), data, tmp_path, **{
        "trainer.batch_size": 2, "trainer.max_steps": 1, "optimizer.lr": 3e-3, "trainer.save_final": "false"})
    (row,) = read_metrics(train_sft(load_config(CONFIG, over)))
    assert 0 < row["loss"] < 30 and row["grad_norm"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_and_data_builders(family, real_family_models, data, tmp_path, capsys):
    """`mmrl eval`, `mmrl build-data rejection` and `cold-start` on the family: completions are decoded without the
    turn's end."""
    model = real_family_models(family)
    out = tmp_path / "report"
    assert main(["eval", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress",
                 "eval.max_new_tokens=3"]) == 0, capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["n"] == 2
    rs = tmp_path / "rs"
    assert main(["build-data", "rejection", "--model", str(model), "--data", str(data), "--k", "2",
                 "--max-new-tokens", "3", "--out", str(rs)]) == 0, capsys.readouterr().err
    cache = [json.loads(line) for line in (rs / "cache.jsonl").read_text().splitlines()]
    assert [len(e["texts"]) for e in cache] == [2, 2] and all(e["tokens"] > 0 for e in cache)
    tokenizer = load_processor(str(model)).tokenizer
    ends = {tokenizer.eos_token, tokenizer.pad_token, "<|im_end|>", "<end_of_turn>", "<end_of_utterance>"}
    assert not any(end in text for e in cache for text in e["texts"] for end in ends if end)
    # Cold start, offline, the family's model in every role (its random text is rejected: the plumbing runs).
    cold = tmp_path / "cold"
    assert main(["build-data", "cold-start", str(ROOT / "configs/cold_start/offline.yaml"), f"data={data}",
                 f"out={cold}", "limit=1", f"stages.describe.model={model}", f"stages.reason.model={model}",
                 "stages.describe.max_new_tokens=3", "stages.reason.max_new_tokens=3"]) == 0, capsys.readouterr().err
    report = json.loads((cold / "report.json").read_text())
    assert report["input"] == 1 and report["kept"] + sum(report["rejected"].values()) == 1
    assert report["tokens_per_stage"]["pseudo_cot"] > 0


@pytest.fixture(scope="module")
def policies(real_family_policies):
    return real_family_policies


@pytest.mark.parametrize("family", FAMILIES)
def test_serve_turns_an_openai_request_into_exactly_the_templates_prompt(family, policies, tmp_path):
    """System, image, an earlier assistant turn (with reasoning) and a follow-up, through `mmrl serve`'s app: the
    prompt the model gets is the real template's rendering of the same conversation, image tokens included."""
    from mmrl.config.data import DataConfig
    from mmrl.generation.backends import make_backend

    model, processor = policies(family)
    backend = make_backend(model, processor, data_cfg=DataConfig())
    seen: list[dict] = []
    encode = backend.encode
    backend.encode = lambda prompt: seen.append(encode(prompt)) or seen[-1]  # records what the model is given
    path = tmp_path / "im.png"
    Image.new("RGB", (60, 40), (10, 200, 30)).save(path)
    request = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_to_data_url(path)}},
                                     {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": "<think>one</think><answer>1</answer>"},
        {"role": "user", "content": "And the color?"},
    ]
    TestClient = pytest.importorskip("fastapi.testclient").TestClient  # the serve extra; the GPU image lacks it
    from mmrl.generation.server import create_app

    with TestClient(create_app(backend, family)) as client:
        reply = client.post("/v1/chat/completions", json={"model": family, "messages": request, "max_tokens": 2,
                                                         "temperature": 0})
    assert reply.status_code == 200, reply.text
    template_messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>one</think><answer>1</answer>"}]},
        {"role": "user", "content": [{"type": "text", "text": "And the color?"}]},
    ]
    text = processor.apply_chat_template(template_messages, add_generation_prompt=True, tokenize=False)
    images = prepare_sample_images(Sample(id="x", prompt="", answer=None, images=[str(path)]), DataConfig())
    want = processor(text=[text], images=images, do_resize=not _takes_28_grid(processor), return_tensors="pt")
    assert torch.equal(seen[0]["input_ids"], want["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_inputs_and_engine_directory(family, policies, tmp_path):
    """The text and images handed to vLLM encode to the trainer's prompt; the engine's directory reloads to a
    processor with the same template and the same encoding (CPU side, no engine)."""
    from mmrl.config.data import DataConfig
    from mmrl.generation.vllm_backend import _prompt_inputs, write_engine_dir

    model, processor = policies(family)
    path = tmp_path / "im.png"
    Image.new("RGB", (90, 61), (200, 30, 30)).save(path)
    sample = Sample(id="s", prompt="<image>What colour is the square?", answer="red", images=[str(path)])
    cfg = DataConfig(prompt_suffix=" Answer in one word.")
    inputs = _prompt_inputs(sample, processor, cfg)
    want = encode_one(processor, sample, cfg)
    again = processor(text=[inputs["prompt"]], images=inputs["multi_modal_data"]["image"], return_tensors="pt")
    assert torch.equal(again["input_ids"], want["input_ids"])
    write_engine_dir(model, processor, str(tmp_path / "engine"), cfg)
    engine = load_processor(str(tmp_path / "engine"))
    assert engine.chat_template == processor.chat_template
    got = engine(text=[inputs["prompt"]], images=inputs["multi_modal_data"]["image"], return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"])
