"""Beyond Qwen2.5-VL: the same GRPO, SFT and eval paths on tiny Qwen3-VL and Gemma3 (real classes, own tokenizers).

Qwen3-VL (patch 16, interleaved M-RoPE, DeepStack) takes the shared-prefix path and must match the naive forward;
Gemma3 falls back to the naive forward and says so once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.cli import main
from mmrl.config import load_config
from mmrl.data.sample import Sample
from mmrl.eval.generate import generate_completions
from mmrl.generation import SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.generation.hf import HFNaiveBackend, HFSharedPrefixBackend
from mmrl.models.loading import load_policy
from mmrl.models.logprobs import completion_logprobs, naive_completion_logprobs
from mmrl.models.prefix import supports_prefix_sharing
from mmrl.models.tokens import placeholder_token_ids
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics
from mmrl.sft.trainer import train_sft

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
REWARD = ROOT / "tests" / "fixtures" / "trainer" / "varied_reward.py"
PRESETS = ["tiny-qwen3-vl", "tiny-gemma3"]
SHARES_PREFIX = {"tiny-qwen3-vl": True, "tiny-gemma3": False}


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 8, 0, tmp_path_factory.mktemp("synthetic"), forms=["open"], image_size=56)


@pytest.fixture(params=PRESETS)
def preset_name(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=PRESETS)
def policy(request):
    loaded = load_policy(load_config(None, [f"model.name_or_path={request.param}"]).model)
    return request.param, loaded.model, loaded.processor


def make_prompt(processor, height, width, seed):
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt"))


def test_log_probs_match_the_naive_forward_or_fall_back_with_one_line(policy, monkeypatch, caplog):
    import mmrl.models.prefix

    monkeypatch.setattr(mmrl.models.prefix, "_FALLBACK_NOTED", set())  # whatever ran before, this run says it afresh
    preset, model, processor = policy
    assert supports_prefix_sharing(model) == SHARES_PREFIX[preset]
    prompt = make_prompt(processor, 64, 96, seed=1)
    ids = torch.randint(0, 500, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    ids[mask == 0] = processor.tokenizer.pad_token_id
    model.zero_grad(set_to_none=True)
    with caplog.at_level("WARNING", logger="mmrl.models.prefix"):
        shared = completion_logprobs(model, prompt, ids, mask)
        make_backend(model, processor)  # the rollout backend falls back too, without saying it twice
    fallback_lines = [r for r in caplog.records if "naive forward" in r.getMessage()]
    assert len(fallback_lines) == (0 if SHARES_PREFIX[preset] else 1)
    shared.sum().backward()
    vision_grads = [p.grad for n, p in model.named_parameters() if "vision" in n or "visual" in n]
    assert any(g is not None and g.abs().max() > 0 for g in vision_grads), "no gradient reached the vision tower"
    with torch.no_grad():
        naive = naive_completion_logprobs(model, prompt, ids, mask)
    assert (shared.detach() - naive).abs().max() < 1e-5
    assert (shared[mask == 0] == 0).all() and (shared[mask == 1] < 0).all()


def _push_placeholders(model, banned):
    """A forward hook that makes the image/video placeholders by far the most likely next tokens."""
    boost = torch.zeros(model.lm_head.weight.shape[0])
    boost[banned] = 1e4
    return model.lm_head.register_forward_hook(lambda _m, _i, out: out + boost.to(out.device, out.dtype))


def test_placeholders_are_never_sampled_in_rollouts_or_greedy_eval(policy, tmp_path):
    """Even when the policy puts all its mass on the image/video placeholders, no rollout or eval emits one."""
    preset, model, processor = policy
    backend = make_backend(model, processor)
    assert isinstance(backend, HFSharedPrefixBackend if SHARES_PREFIX[preset] else HFNaiveBackend)
    banned = placeholder_token_ids(model, processor.tokenizer)
    image_token = getattr(model.config, "image_token_id", None) or getattr(model.config, "image_token_index", None)
    assert image_token in banned
    Image.new("RGB", (56, 56), "red").save(tmp_path / "red.png")
    sample = Sample(id="r", images=[str(tmp_path / "red.png")], prompt="<image>What color?", answer="red", task="open")
    handle = _push_placeholders(model, banned)
    try:
        prompt = make_prompt(processor, 64, 64, seed=2)
        for backend_used in (backend, HFNaiveBackend(model, processor)):
            for temperature in (1.0, 0.0):
                batch = backend_used.rollout([prompt], SamplingParams(n=2, max_new_tokens=4, temperature=temperature),
                                             generator=torch.Generator().manual_seed(0))
                assert batch.completion_mask.sum() > 0
                assert not torch.isin(batch.completion_ids, torch.tensor(banned)).any(), (temperature, batch.texts)
        (completion,) = generate_completions(model, processor, [sample], load_config(None).data, max_new_tokens=4)[0]
    finally:
        handle.remove()
    assert completion.n_tokens > 0
    assert not any(token in completion.text for token in processor.tokenizer.convert_ids_to_tokens(banned))


def test_grpo_step_trains_language_model_and_vision_tower(preset_name, synthetic_data, tmp_path):
    over = {"model.name_or_path": preset_name, "data.train": str(synthetic_data), "trainer.output_dir": str(tmp_path),
            "trainer.report_to": "[jsonl]", "trainer.progress": "false", "trainer.save_steps": 0,
            "trainer.sample_steps": 0, "trainer.max_steps": 1, "rollout.max_completion_length": 5,
            "rewards": f"[{{name: '{REWARD}:reward'}}]", "optimizer.lr": 1e-3}
    trainer = GRPOLoop(load_config(CONFIG, [f"{k}={v}" for k, v in over.items()]))
    before = {k: v.detach().clone() for k, v in trainer.run.model.named_parameters()}
    trainer.train()
    changed = [k for k, v in trainer.run.model.named_parameters() if not torch.equal(before[k], v)]
    assert any("vision" in k or "visual" in k for k in changed), "the vision tower received no gradient"
    assert any("language_model" in k for k in changed)
    (row,) = read_metrics(tmp_path)
    assert row["grad_norm"] > 0 and row["rollout/generated_tokens"] > 0
    # The prompt's image is encoded once per group on both paths (the naive one encodes G copies in that call).
    assert row["rollout/vision_encoder_calls"] == 2


def test_sft_loss_falls(preset_name, synthetic_data, tmp_path):
    over = {"model.name_or_path": preset_name, "data.train": str(synthetic_data), "trainer.output_dir": str(tmp_path),
            "trainer.report_to": "[jsonl]", "trainer.progress": "false", "trainer.batch_size": 4,
            "trainer.max_steps": 4, "optimizer.lr": 3e-3, "trainer.save_final": "false"}
    run_dir = train_sft(load_config(CONFIG, [f"{k}={v}" for k, v in over.items()]))
    losses = [r["loss"] for r in read_metrics(run_dir)]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_eval_cli(preset_name, tmp_path, capsys):
    for i, color in enumerate(("red", "blue")):
        Image.new("RGB", (56, 56), color).save(tmp_path / f"im{i}.png")
    rows = [{"id": f"q{i}", "images": [f"im{i}.png"], "prompt": "<image>What color?", "answer": color, "task": "text"}
            for i, color in enumerate(("red", "blue"))]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    code = main(["eval", "--model", preset_name, "--data", str(data), "--out", str(out), "--no-progress",
                 "eval.max_new_tokens=3"])
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == preset_name and report["n"] == 2


def test_sampler_log_probs_match_the_training_forward(policy):
    """What the rollout says it sampled with is what the training forward recomputes (shared-prefix presets)."""
    preset, model, processor = policy
    if not SHARES_PREFIX[preset]:
        pytest.skip("the naive backend returns no sampler log-probs")
    prompt = make_prompt(processor, 96, 64, seed=3)
    batch = make_backend(model, processor).rollout([prompt], SamplingParams(n=3, max_new_tokens=6, temperature=0.8),
                                                   generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        recomputed = completion_logprobs(model, prompt, batch.completion_ids, batch.completion_mask, temperature=0.8)
    assert (recomputed - batch.logprobs).abs().max() < 1e-5


def test_encoded_images_fit_the_vision_tower_and_input_size_says_so(policy, tmp_path):
    """mmrl resizes to a 28-pixel grid; Qwen3-VL needs 32 and Gemma3 a fixed side: the processor resizes once more
    and `input_size` (the frame of box rewards) records what the model saw."""
    from mmrl.data.collate import encode_one

    preset, model, processor = policy
    Image.new("RGB", (150, 90), "green").save(tmp_path / "wide.png")
    sample = Sample(id="w", images=[str(tmp_path / "wide.png")], prompt="<image>Where?", answer="x", task="text")
    encoded = encode_one(processor, sample, load_config(None).data)
    width, height = sample.input_size
    if preset == "tiny-gemma3":
        assert (width, height) == (64, 64) and tuple(encoded["pixel_values"].shape[2:]) == (64, 64)
    else:
        assert width % 32 == 0 and height % 32 == 0
        grid = encoded["image_grid_thw"][0]
        assert (int(grid[2]) * 16, int(grid[1]) * 16) == (width, height)
    with torch.no_grad():
        model(**encoded)  # the vision tower takes it: placeholders and features match
