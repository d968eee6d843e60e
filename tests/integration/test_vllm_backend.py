"""`rollout.backend: vllm`: the import guard (CPU: the extra is not installed here) and, on a CUDA machine with the
extra, the backend itself (gpu marker: greedy completions token-identical to the HF backend, a training step)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.errors import UserError
from mmrl.preflight import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
REWARD = ROOT / "tests" / "fixtures" / "trainer" / "varied_reward.py"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
no_vllm = pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the guard does not fire")


def test_vllm_is_a_known_rollout_backend_at_config_load():
    assert load_config(CONFIG, ["rollout.backend=vllm"]).rollout.backend == "vllm"
    with pytest.raises(UserError, match="did you mean 'vllm'"):
        load_config(CONFIG, ["rollout.backend=vlm"])


@no_vllm
def test_without_the_extra_train_is_one_line_exit_2_before_anything_loads(tmp_path):
    """The data path does not exist and the run directory is not created: the guard comes before both."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "mmrl", "train", str(CONFIG), "rollout.backend=vllm",
         f"data.train={tmp_path / 'missing.jsonl'}", f"trainer.output_dir={out}", "trainer.device=cpu"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert 'pip install "mmrl[vllm-torch2' in lines[0] and "rollout.backend" in lines[0]  # the extra of this torch
    assert not out.exists()


@no_vllm
def test_without_the_extra_make_backend_names_the_extra():
    from mmrl.config.model import ModelConfig
    from mmrl.generation.backends import make_backend
    from mmrl.models.loading import load_policy

    loaded = load_policy(ModelConfig(name_or_path="tiny", dtype="fp32"), device="cpu", for_training=False)
    with pytest.raises(UserError, match=r'pip install "mmrl\[vllm-torch2'):
        make_backend(loaded.model, loaded.processor, "vllm")


# -- on a CUDA machine with the extra ----------------------------------------------------------------------------

needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason='needs vLLM: pip install "mmrl[vllm-torchXYZ]" (README)')


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 8, 0, tmp_path_factory.mktemp("synthetic"), forms=["open"], image_size=56)


@pytest.mark.gpu
@needs_vllm
def test_greedy_completions_token_identical_to_the_hf_backend(synthetic_data):
    """Greedy decoding of the tiny preset, same prompts (text + image), same stop rules: the same tokens. fp32 on
    both sides: with random tiny weights the top logits are close, and bf16 kernel differences would flip them."""
    from mmrl.config.model import ModelConfig
    from mmrl.data.dataset import load_datasets
    from mmrl.generation import SamplingParams
    from mmrl.generation.backends import make_backend
    from mmrl.generation.vllm_backend import VLLMBackend
    from mmrl.models.loading import load_policy

    cfg = load_config(CONFIG, [f"data.train={synthetic_data}"])
    samples = load_datasets(list(cfg.data.train), cfg.data)[:4]
    loaded = load_policy(ModelConfig(name_or_path="tiny", dtype="fp32"), device="cuda", for_training=False)
    hf = make_backend(loaded.model, loaded.processor, data_cfg=cfg.data)
    engine = VLLMBackend(loaded.model, loaded.processor, cfg.data, gpu_memory_utilization=0.2, max_model_len=1024)
    params = SamplingParams(n=1, temperature=0, max_new_tokens=24, logprobs=True)
    want = hf.generate(samples, params)
    got = engine.generate(samples, params)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    assert [[c.finish_reason for c in g] for g in got] == [[c.finish_reason for c in g] for g in want]



@pytest.mark.gpu
@needs_vllm
def test_grpo_steps_with_vllm_rollouts_log_the_mismatch(synthetic_data, tmp_path):
    """Two GRPO steps with colocated vLLM rollouts (sleep/wake, weight sync after each step), bf16: the policy moves
    and every step logs the sampler/trainer mismatch that TIS corrects. In a process of its own: vLLM <= 0.33 allows
    one engine per process, and the greedy test above holds one in this one."""
    import json

    from mmrl.runs.logger import read_metrics

    overrides = [f"data.train={synthetic_data}", f"trainer.output_dir={tmp_path}", "trainer.report_to=[jsonl]",
                 "trainer.progress=false", "trainer.save_steps=0", "trainer.sample_steps=0", "trainer.max_steps=2",
                 "trainer.device=cuda", "model.dtype=bf16", "rollout.backend=vllm", "rollout.max_completion_length=8",
                 "rollout.vllm_gpu_memory_utilization=0.2", "rollout.vllm_max_model_len=1024",
                 f"rewards=[{{name: '{REWARD}:reward'}}]", "optimizer.lr=1e-3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fixtures" / "trainer" / "grpo_moves.py"), str(CONFIG),
                           *overrides], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["moved"]
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rollout/logprob_kl"] >= 0 and r["rollout/tis_weight_mean"] > 0 for r in rows)


# -- the parts of the backend that need no engine (CPU) ----------------------------------------------------------


def test_weight_sync_stream_is_the_plain_policys_state_dict():
    from mmrl.config.model import ModelConfig
    from mmrl.generation.vllm_backend import policy_weights
    from mmrl.models.loading import load_policy

    model = load_policy(ModelConfig(name_or_path="tiny", dtype="fp32"), device="cpu").model
    want = model.state_dict()
    got = dict(policy_weights(model))
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_lora_policy_is_synced_merged_under_the_base_names_then_unmerged():
    """The engine gets base-model names and W + scale * B A (what merge_and_unload gives); the policy keeps training
    its adapters afterwards (unmerged: its forward is unchanged)."""
    import copy

    from mmrl.config import load_config
    from mmrl.generation.vllm_backend import policy_weights
    from mmrl.models.loading import load_policy

    model = load_policy(load_config(None, ["model.dtype=fp32", "model.lora.enabled=true", "model.lora.r=4"]).model,
                        device="cpu").model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the merge visible
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = {k: v.clone() for k, v in policy_weights(model)}  # copied as they come, as the engine's load_weights does
    assert sorted(got) == sorted(merged)
    assert not any("lora_" in k or "base_layer" in k for k in got)
    assert all(torch.allclose(got[k], merged[k], atol=1e-6) for k in merged)
    base = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in before.items()
            if "lora_" not in k}
    assert any(not torch.allclose(got[k], base[k]) for k in got)  # some synced weights really are merged ones
    after = model.state_dict()
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)  # unmerged again


def test_the_engines_prompt_is_the_trainers_prompt(tmp_path):
    """The text and images handed to vLLM, run through the same processor, give exactly the trainer's prompt tokens
    (`encode_one`), image tokens included; a stage's prompt suffix reaches both."""
    from PIL import Image

    from mmrl.config.data import DataConfig
    from mmrl.data.collate import encode_one
    from mmrl.data.sample import Sample
    from mmrl.generation.vllm_backend import _prompt_inputs
    from mmrl.models.loading import load_processor
    from mmrl.models.tiny import ensure_tiny_model

    processor = load_processor(ensure_tiny_model("tiny"))
    path = tmp_path / "square.png"
    Image.new("RGB", (90, 61), (200, 30, 30)).save(path)
    sample = Sample(id="s", prompt="<image>What colour is the square?", answer="red", images=[str(path)])
    cfg = DataConfig(min_pixels=3136, max_pixels=6272, prompt_suffix=" Answer in one word.")
    inputs = _prompt_inputs(sample, processor, cfg)
    assert "Answer in one word." in inputs["prompt"]
    images = inputs["multi_modal_data"]["image"]
    again = processor(text=[inputs["prompt"]], images=images, return_tensors="pt")
    want = encode_one(processor, sample, cfg)
    assert torch.equal(again["input_ids"], want["input_ids"])
    assert torch.equal(again["image_grid_thw"], want["image_grid_thw"])


# -- the engine's outputs to a RolloutBatch (CPU: vLLM's output records stand in as plain objects) ----------------


@pytest.fixture(scope="module")
def unstarted_backend():
    """A VLLMBackend with the tiny model's token rules but no engine: `_batch` and `_seeds` need none."""
    from mmrl.config.model import ModelConfig
    from mmrl.generation.decoding import attach_token_rules
    from mmrl.generation.vllm_backend import VLLMBackend
    from mmrl.models.loading import load_policy

    loaded = load_policy(ModelConfig(name_or_path="tiny", dtype="fp32"), device="cpu", for_training=False)
    backend = object.__new__(VLLMBackend)
    backend.model, backend.processor = loaded.model, loaded.processor
    attach_token_rules(backend, loaded.model, loaded.processor)
    return backend


def _engine_outputs(backend, rows: list[tuple[list[int], list[float] | None, str]], prompt_len: int = 5) -> list:
    """vLLM's RequestOutput shape: .outputs[k].token_ids / .logprobs (one {token: Logprob} per step) / .finish_reason."""
    from types import SimpleNamespace as NS

    outs = [NS(token_ids=ids, finish_reason=reason,
               logprobs=None if lps is None else [{t: NS(logprob=lp)} for t, lp in zip(ids, lps)])
            for ids, lps, reason in rows]
    return [NS(outputs=outs, prompt_token_ids=list(range(prompt_len)))]


@pytest.mark.parametrize("truncating", [{"top_p": 0.9}, {"top_k": 5}, {"min_new_tokens": 3}])
def test_engine_logprobs_of_a_truncated_distribution_are_not_handed_to_tis(unstarted_backend, truncating):
    """vLLM's processed log-probs are renormalised over what top-k/top-p (or min_new_tokens' stop ban) keep; the
    trainer's are over the whole vocabulary, so their difference is log(kept mass), not a rollout/trainer mismatch:
    used as TIS weights they would scale every token's gradient down by it. They are dropped (TIS off, nothing
    logged); untruncated sampling hands them over as they are."""
    from mmrl.generation import SamplingParams

    eos = unstarted_backend.eos_ids[0]
    rows = [([11, 12, eos], [-0.5, -1.25, -2.0], "stop"), ([13, 14, 15, 16], [-0.1, -0.2, -0.3, -0.4], "length")]
    plain = unstarted_backend._batch(_engine_outputs(unstarted_backend, rows), SamplingParams(n=2), torch.device("cpu"))
    assert plain.logprobs is not None
    assert torch.equal(plain.logprobs, torch.tensor([[-0.5, -1.25, -2.0, 0.0], [-0.1, -0.2, -0.3, -0.4]]))
    assert plain.truncated.tolist() == [False, True] and plain.completion_mask.sum(1).tolist() == [3, 4]
    cut = unstarted_backend._batch(_engine_outputs(unstarted_backend, rows), SamplingParams(n=2, **truncating),
                                   torch.device("cpu"))
    assert cut.logprobs is None
    assert torch.equal(cut.completion_ids, plain.completion_ids)  # the completions themselves are kept


def test_a_row_without_engine_logprobs_gives_none_not_zeros(unstarted_backend):
    """Zeros for a missing row would read as log-prob 0 (probability 1): a huge fake mismatch and skewed weights."""
    from mmrl.generation import SamplingParams

    rows = [([11, 12], [-0.5, -1.0], "length"), ([13, 14], None, "length")]
    batch = unstarted_backend._batch(_engine_outputs(unstarted_backend, rows), SamplingParams(n=2), torch.device("cpu"))
    assert batch.logprobs is None and batch.completion_mask.sum().item() == 4


def test_prompt_seeds_fix_each_prompts_engine_seed(unstarted_backend):
    """As on the HF backend, per-prompt seeds (the trainer's: seed + global draw index) override the generator, so a
    prompt's completions do not depend on which process or call it lands in; without them the generator draws one
    seed per prompt, reproducibly."""
    from mmrl.generation import SamplingParams

    seeds = unstarted_backend._seeds
    cpu = torch.device("cpu")
    assert seeds(3, SamplingParams(), torch.Generator().manual_seed(1), [7, 8, 9], cpu) == [7, 8, 9]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        seeds(3, SamplingParams(), None, [7, 8], cpu)
    drawn = seeds(3, SamplingParams(), torch.Generator().manual_seed(1), None, cpu)
    assert drawn == seeds(3, SamplingParams(), torch.Generator().manual_seed(1), None, cpu) and len(set(drawn)) == 3
    assert seeds(2, SamplingParams(seed=4), None, None, cpu) == seeds(2, SamplingParams(), torch.Generator().manual_seed(4),
                                                                       None, cpu)
    assert seeds(2, SamplingParams(), None, None, cpu) == [None, None]


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3-vl", "qwen2.5-vl-3b"])
def test_the_engine_directory_reloads_as_the_same_processor_and_config(tmp_path, preset):
    """vLLM starts from a directory holding the policy's config and processor. A processor without a video
    processor (no torchvision here; the benchmark's presets everywhere) broke `processor.save_pretrained`; the
    directory must reload to a processor that encodes a prompt and its image exactly as the policy's does."""
    from PIL import Image
    from transformers import AutoConfig

    from mmrl.generation.vllm_backend import write_engine_dir
    from mmrl.models.loading import load_processor
    from mmrl.models.tiny import PRESETS, build_parts, ensure_tiny_model

    if preset == "qwen2.5-vl-3b":  # what benchmarks/gpu_throughput.py --backend vllm hands the engine
        _tok, processor, config, _eos, _pad = build_parts(PRESETS[preset], 0)
    else:
        path = ensure_tiny_model(preset)
        processor, config = load_processor(path), AutoConfig.from_pretrained(path)
    model = type("Policy", (), {"config": config})()  # write_engine_dir reads only the config (no weights)
    write_engine_dir(model, processor, str(tmp_path))
    again = load_processor(str(tmp_path))
    reloaded = {k: v for k, v in AutoConfig.from_pretrained(tmp_path).to_dict().items() if k != "_name_or_path"}
    assert reloaded == {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert again.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    image = Image.new("RGB", (120, 90), (10, 200, 30))
    want, got = processor(text=[text], images=[image], return_tensors="pt"), again(text=[text], images=[image],
                                                                                  return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["pixel_values"], want["pixel_values"])
    video = tmp_path / "video_preprocessor_config.json"
    assert video.is_file() == (getattr(processor, "video_processor", None) is None)


@pytest.mark.parametrize("preset,side,max_pixels", [("qwen2.5-vl-3b", 30, 448 * 448), ("tiny", 700, 784 * 784)])
def test_the_engines_processor_keeps_the_trainers_image_tokens_outside_its_own_pixel_bounds(tmp_path, preset, side,
                                                                                             max_pixels):
    """vLLM's processor resizes every image within its own pixel bounds; the trainer's encoding keeps the image as
    data.min/max_pixels resized it. A small image (the released Qwen2.5-VL bounds start at 3136 pixels, data's at
    784) or data.max_pixels above the processor's would give the engine other image tokens than the trainer's
    forward sees. The engine's directory reloads to a processor that, resizing as vLLM does, gives the trainer's."""
    from PIL import Image

    from mmrl.config.data import DataConfig
    from mmrl.data.collate import encode_one
    from mmrl.data.sample import Sample
    from mmrl.generation.vllm_backend import _prompt_inputs, write_engine_dir
    from mmrl.models.loading import load_processor
    from mmrl.models.tiny import PRESETS, build_parts, ensure_tiny_model

    if preset == "tiny":
        processor = load_processor(ensure_tiny_model(preset))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(ensure_tiny_model(preset))
    else:
        _tok, processor, config, _eos, _pad = build_parts(PRESETS[preset], 0)
    path = tmp_path / "img.png"
    Image.new("RGB", (side, side), (200, 30, 30)).save(path)
    sample = Sample(id="s", prompt="<image>What colour?", answer="red", images=[str(path)])
    cfg = DataConfig(max_pixels=max_pixels)
    want = encode_one(processor, sample, cfg)
    inputs = _prompt_inputs(sample, processor, cfg)
    write_engine_dir(type("Policy", (), {"config": config})(), processor, str(tmp_path / "engine"), cfg)
    engine = load_processor(str(tmp_path / "engine"))
    got = engine(text=[inputs["prompt"]], images=inputs["multi_modal_data"]["image"], return_tensors="pt")
    plain = processor(text=[inputs["prompt"]], images=inputs["multi_modal_data"]["image"], return_tensors="pt")
    assert not torch.equal(plain["image_grid_thw"], want["image_grid_thw"])  # the policy's own bounds would differ
    assert torch.equal(got["image_grid_thw"], want["image_grid_thw"])
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.allclose(got["pixel_values"], want["pixel_values"])
