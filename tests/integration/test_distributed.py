"""A run's result does not depend on how many processes ran it: per-prompt random streams + DDP (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.engine.distributed import stream_seed
from mmrl.engine.run_logger import read_metrics
from mmrl.generation import SamplingParams
from mmrl.generation.hf import HFNaiveBackend, HFSharedPrefixBackend
from mmrl.models.loading import load_policy

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "trainer"
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"



def _errors(stderr: str) -> str:
    """The error lines of a failed launch (its full stderr is mostly the two ranks' interleaved tracebacks)."""
    return "\n".join(line for line in stderr.splitlines() if "Error" in line)[-3000:]


@pytest.fixture(scope="module")
def policy():
    loaded = load_policy(load_config(None).model)
    return loaded.model.float(), loaded.processor


def _prompt(processor, question: str) -> dict:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], return_tensors="pt"))


@pytest.mark.parametrize("backend_cls", [HFSharedPrefixBackend, HFNaiveBackend])
def test_a_prompt_samples_the_same_completions_whoever_shares_its_call(policy, backend_cls):
    """Per-prompt streams: prompt B's completions are the same alone, after A, or after A with a shared generator
    drawn from before — what 1 process (A and B) and 2 processes (A | B) see."""
    model, processor = policy
    backend = backend_cls(model, processor)
    a, b = _prompt(processor, "what is 2 + 3?"), _prompt(processor, "name a colour")
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6)
    seeds = [stream_seed(0, 0, 0), stream_seed(0, 0, 1)]
    together = backend.rollout([a, b], params, prompt_seeds=seeds)
    alone = backend.rollout([b], params, generator=torch.Generator().manual_seed(7), prompt_seeds=seeds[1:])
    assert torch.equal(together.completion_ids[3:], alone.completion_ids)
    # ... and the streams do differ between prompts and between draws (not one fixed seed for everything)
    again = backend.rollout([b], params, prompt_seeds=[stream_seed(0, 0, 2)])
    assert not torch.equal(again.completion_ids, alone.completion_ids)
    with pytest.raises(ValueError, match="prompt_seeds"):
        backend.rollout([a, b], params, prompt_seeds=seeds[:1])


def test_one_process_ddp_and_fsdp2_train_to_the_same_weights(tmp_path, tiny_model_dir, port_args):
    """Same global batch (2 prompts x G=4 per step, 2 steps, real rollouts) on 1 process, 2 DDP processes and 2 FSDP2
    processes (accelerate launch with the CPU presets, gloo): final fp32 weights within 1e-5; both ranks ran; the
    run's first metrics row records world size and engine."""
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", image_size=56)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    launch = [sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file"]
    for name, cmd in (("one", [sys.executable]), ("ddp", [*launch, str(ROOT / "configs/accelerate/ddp_cpu_2proc.yaml")]),
                      ("fsdp2", [*launch, str(ROOT / "configs/accelerate/fsdp_cpu_2proc.yaml")])):
        out = tmp_path / name
        out.mkdir()
        args = [f"data.train={data}", f"trainer.output_dir={out / 'run'}", "trainer.report_to=[jsonl]",
                "trainer.progress=false", "trainer.save_steps=0", "trainer.sample_steps=0", "trainer.save_final=false",
                "trainer.max_steps=2", "trainer.prompts_per_step=2", "rollout.max_completion_length=5",
                "model.dtype=fp32", "trainer.device=cpu", "optimizer.lr=1e-3",
                f"rewards=[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}]"]
        cmd = [*cmd, str(FIXTURES / "world_size_run.py"), str(CONFIG), str(out), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        assert done.returncode == 0, (name, _errors(done.stderr))
        results[name] = out
    assert json.loads((results["one"] / "rank-0.json").read_text())["world_size"] == 1
    first = {name: read_metrics(out / "run")[0] for name, out in results.items()}
    assert (first["one"]["world_size"], first["one"]["engine"]) == (1, "single")
    one = torch.load(results["one"] / "final.pt")
    start = load_policy(load_config(str(CONFIG), ["model.dtype=fp32"]).model).model
    moved = max(float((one[k] - p.detach()).abs().max()) for k, p in start.named_parameters())
    assert moved > 1e-4  # training did move the weights: the comparison below is not trivially true
    for engine in ("ddp", "fsdp2"):
        ranks = [json.loads((results[engine] / f"rank-{r}.json").read_text()) for r in (0, 1)]
        assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
        assert ranks[0]["pid"] != ranks[1]["pid"]
        assert all(r["sharded"] == (engine == "fsdp2") for r in ranks)  # FSDP2 really shards, DDP replicates
        if engine == "fsdp2":
            assert all(r["local_fraction"] < 0.6 for r in ranks)
        assert (first[engine]["world_size"], first[engine]["engine"]) == (2, engine)
        other = torch.load(results[engine] / "final.pt")
        assert max(float((one[k] - other[k]).abs().max()) for k in one) < 1e-5, engine


def test_fsdp2_save_resume_is_exact_and_the_checkpoint_is_a_plain_hf_directory(tmp_path, tiny_model_dir, port_args):
    """FSDP2 (2 processes): 2 steps straight == 1 step, checkpoint, a new launch resuming for step 2 (weights and the
    gathered, sharded optimizer state both round-trip); the checkpoint loads with `from_pretrained`."""
    from transformers import AutoModelForImageTextToText

    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", image_size=56)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file",
              str(ROOT / "configs/accelerate/fsdp_cpu_2proc.yaml"), str(FIXTURES / "world_size_run.py"), str(CONFIG)]
    base = [f"data.train={data}", "trainer.report_to=[jsonl]", "trainer.progress=false", "trainer.save_steps=0",
            "trainer.sample_steps=0", "trainer.prompts_per_step=2", "rollout.max_completion_length=5",
            "model.dtype=fp32", "trainer.device=cpu", "optimizer.lr=1e-3",
            f"rewards=[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}]"]
    runs = {"straight": ["trainer.max_steps=2", "trainer.save_final=false"],
            "first": ["trainer.max_steps=1", "trainer.save_final=true"],  # ends after writing checkpoint step-1
            "resumed": ["trainer.max_steps=2", "trainer.resume=auto", "trainer.save_final=false"]}
    for name, extra in runs.items():
        out = tmp_path / name
        out.mkdir()
        run_dir = tmp_path / ("straight" if name == "straight" else "shared") / "run"
        done = subprocess.run([*launch, str(out), f"trainer.output_dir={run_dir}", *base, *extra],
                              capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        assert done.returncode == 0, (name, _errors(done.stderr))
    straight, resumed = (torch.load(tmp_path / n / "final.pt") for n in ("straight", "resumed"))
    assert max(float((straight[k] - resumed[k]).abs().max()) for k in straight) < 1e-6
    rows = read_metrics(tmp_path / "shared" / "run")
    assert [r["step"] for r in rows] == [1, 2]
    step1 = torch.load(tmp_path / "first" / "final.pt")
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "shared" / "run" / "checkpoints" / "step-1")
    got = {k: v.detach() for k, v in exported.named_parameters()}
    assert max(float((got[k] - step1[k]).abs().max()) for k in step1) == 0.0


def test_group_forward_is_the_training_forward_with_checkpointing_on_and_off(policy):
    """`GroupForward` (the module DDP/FSDP wrap): log-probs and gradients equal the naive forward's, checkpointing
    on or off."""
    import copy

    import numpy as np
    from PIL import Image

    from mmrl.models.loading import enable_activation_checkpointing
    from mmrl.models.logprobs import naive_completion_logprobs
    from mmrl.models.training_forward import GroupForward

    model, processor = policy
    model = copy.deepcopy(model)
    pixels = (np.random.RandomState(3).rand(56, 56, 3) * 255).astype("uint8")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = dict(processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt"))
    ids = torch.randint(0, 1000, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0

    def run(fn):
        model.zero_grad(set_to_none=True)
        lp = fn(prompt, ids, mask)
        (lp * torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)).sum().backward()
        return lp.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.train()
    expected = run(lambda *a: naive_completion_logprobs(model, *a))
    for checkpointing in (False, True):
        if checkpointing:
            enable_activation_checkpointing(model)
        got = run(GroupForward(model))
        assert (got[0] - expected[0]).abs().max() < 1e-5
        assert len(got[1]) == len(expected[1])
        for a, b in zip(got[1], expected[1], strict=True):
            assert (a - b).abs().max() <= 1e-5 + 1e-4 * b.abs().max()


def test_the_launch_preset_picks_the_engine(monkeypatch):
    from mmrl.engine.distributed import engine_from_launch
    from mmrl.errors import UserError

    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION"):
        monkeypatch.delenv(key, raising=False)
    assert engine_from_launch() == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert engine_from_launch() == "fsdp2"
    monkeypatch.setenv("FSDP_VERSION", "1")  # FSDP1 is not offered: an error, not a silent DDP run
    with pytest.raises(UserError, match="fsdp_version: 2"):
        engine_from_launch()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert engine_from_launch() == "deepspeed"


def test_fsdp2_says_what_it_does_not_cover_yet():
    from mmrl.engine.run import _check_fsdp2
    from mmrl.errors import UserError

    _check_fsdp2(load_config(str(CONFIG)))  # the plain recipe is covered
    with pytest.raises(UserError, match="algorithm.beta"):
        _check_fsdp2(load_config(str(CONFIG), ["algorithm.beta=0.04"]))
    with pytest.raises(UserError, match="model.lora.enabled"):
        _check_fsdp2(load_config(str(CONFIG), ["model.lora.enabled=true"]))
