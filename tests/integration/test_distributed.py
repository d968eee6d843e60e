"""A run's result does not depend on how many processes ran it (per-prompt random streams; DDP, FSDP2 and DeepSpeed
ZeRO-2 in real processes), with or without a KL reference or LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.generation import SamplingParams
from mmrl.generation.hf import HFNaiveBackend, HFSharedPrefixBackend
from mmrl.models.loading import load_policy
from mmrl.parallel.distributed import stream_seed
from mmrl.runs.logger import read_metrics
from tests.integration.launch import (
    CONFIG,
    FIXTURES,
    launcher,
    max_difference,
    ranks,
    run,
    train_args,
    world_size_run,
)


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


KL = ["algorithm.beta=0.1", "algorithm.kl_penalty=loss", "algorithm.kl_estimator=k3"]
LORA = ["model.lora.enabled=true", "model.lora.r=4", "optimizer.lr=1e-2", *KL]


@pytest.fixture(scope="module")
def color_data(tmp_path_factory, tiny_model_dir):
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 8, 0, tmp_path_factory.mktemp("data"), image_size=56)


def _initial_weights(*overrides: str) -> dict[str, torch.Tensor]:
    model = load_policy(load_config(str(CONFIG), ["model.dtype=fp32", *overrides]).model).model
    return {k: p.detach() for k, p in model.named_parameters()}


def _one_process_run(out: Path, color_data, extra: list[str]) -> Path:
    """1 process, 2 GRPO steps with `extra` overrides: the run the 2-process engines must reproduce."""
    world_size_run("one", out, None, [*train_args(color_data), f"trainer.output_dir={out / 'run'}",
                                      "trainer.max_steps=2", "trainer.save_final=false", *extra])
    return out


@pytest.fixture(scope="module")
def one_process_kl(tmp_path_factory, color_data):
    """1 process, 2 GRPO steps with a k3 KL to a frozen reference."""
    return _one_process_run(tmp_path_factory.mktemp("one-kl"), color_data, KL)


@pytest.mark.parametrize("engine", ["ddp", "fsdp2", "deepspeed"])
def test_one_and_two_processes_train_to_the_same_weights_with_a_kl_reference(engine, one_process_kl, color_data,
                                                                             tmp_path, port_args):
    """Same global batch (2 prompts x G=4 per step, 2 steps, real rollouts, k3 KL to a frozen reference in the loss)
    on 1 process and on 2 processes of each engine (accelerate launch with the CPU presets, gloo): final fp32 weights
    within 1e-5 and the same KL; both ranks ran; FSDP2 shards the policy and the reference, ZeRO-2 partitions the
    optimizer state and keeps a whole reference; the run's first metrics row records world size and engine."""
    if engine == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'mmrl[deepspeed]')")
    single = ranks(one_process_kl, world=1)[0]
    assert (single["world_size"], single["reference"], single["optimizer_state_fraction"]) == (1, "copy", 1.0)
    one_rows = read_metrics(one_process_kl / "run")
    assert (one_rows[0]["world_size"], one_rows[0]["engine"]) == (1, "single")
    assert one_rows[1]["loss/kl_mean"] > 1e-3  # the policy left the reference: the KL term shaped step 2
    one = torch.load(one_process_kl / "final.pt")
    assert max_difference(one, _initial_weights()) > 1e-4  # training moved the weights: the check below means something

    out = world_size_run(engine, tmp_path / engine, port_args, [
        *train_args(color_data), f"trainer.output_dir={tmp_path / engine / 'run'}", "trainer.max_steps=2",
        "trainer.save_final=false", *KL])
    two = ranks(out)
    assert [(r["rank"], r["world_size"]) for r in two] == [(0, 2), (1, 2)]
    assert two[0]["pid"] != two[1]["pid"]
    sharded = engine == "fsdp2"
    assert all(r["sharded"] == sharded and r["reference_sharded"] == sharded for r in two)
    assert all(r["reference"] == "copy" for r in two)
    if sharded:  # each rank holds about half the policy and half the reference
        assert all(r["local_fraction"] < 0.6 and r["reference_local_fraction"] < 0.6 for r in two)
    if engine == "deepspeed":  # ZeRO partitions the AdamW state
        assert all(0.4 < r["optimizer_state_fraction"] < 0.6 for r in two)
    rows = read_metrics(out / "run")
    assert (rows[0]["world_size"], rows[0]["engine"]) == (2, engine)
    assert abs(rows[1]["loss/kl_mean"] - one_rows[1]["loss/kl_mean"]) < 1e-6
    assert max_difference(one, torch.load(out / "final.pt")) < 1e-5


@pytest.fixture(scope="module")
def one_process_lora(tmp_path_factory, color_data):
    """1 process, 2 GRPO steps of LoRA with a k3 KL (the reference: the adapter switched off)."""
    return _one_process_run(tmp_path_factory.mktemp("one-lora"), color_data, LORA)


def _lora_moved(weights: dict[str, torch.Tensor]) -> float:
    return max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k)  # lora_B starts at 0


def test_lora_under_fsdp2_matches_one_process_through_a_save_and_resume(one_process_lora, color_data, tmp_path,
                                                                       port_args):
    """LoRA + KL under 2-process FSDP2: step 1, an adapter checkpoint, a new launch resuming it for step 2 -> the
    1-process weights within 1e-5; the checkpoint is a plain peft adapter holding step 1's adapter weights."""
    from safetensors.torch import load_file

    one = torch.load(one_process_lora / "final.pt")
    assert _lora_moved(one) > 1e-3
    run_dir = tmp_path / "run"
    base = [*train_args(color_data), f"trainer.output_dir={run_dir}", *LORA]
    first = world_size_run("fsdp2", tmp_path / "first", port_args,
                           [*base, "trainer.max_steps=1", "trainer.save_final=true"])
    resumed = world_size_run("fsdp2", tmp_path / "resumed", port_args,
                             [*base, "trainer.max_steps=2", "trainer.resume=auto", "trainer.save_final=false"])
    assert [(r["rank"], r["world_size"], r["sharded"], r["reference"]) for r in ranks(resumed)] == [
        (0, 2, True, "shared"), (1, 2, True, "shared")]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert max_difference(one, torch.load(resumed / "final.pt")) < 1e-5
    step1 = torch.load(first / "final.pt")
    saved = load_file(run_dir / "checkpoints" / "step-1" / "adapter_model.safetensors")
    live = {k.replace(".default.", "."): v for k, v in step1.items() if "lora_" in k}
    assert _lora_moved(step1) > 1e-3 and max_difference(live, saved) == 0.0


def test_lora_under_deepspeed_zero2_matches_one_process(one_process_lora, color_data, tmp_path, port_args):
    """LoRA + KL under 2-process DeepSpeed ZeRO-2 (which partitions the adapters' optimizer state only): the
    1-process weights within 1e-5."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'mmrl[deepspeed]')")
    out = world_size_run("deepspeed", tmp_path / "zero2", port_args, [
        *train_args(color_data), f"trainer.output_dir={tmp_path / 'zero2' / 'run'}", "trainer.max_steps=2",
        "trainer.save_final=false", *LORA])
    assert [(r["rank"], r["world_size"], r["reference"]) for r in ranks(out)] == [(0, 2, "shared"), (1, 2, "shared")]
    assert all(0.4 < r["optimizer_state_fraction"] < 0.6 for r in ranks(out))
    assert max_difference(torch.load(one_process_lora / "final.pt"), torch.load(out / "final.pt")) < 1e-5


# The RL update's hard cases, on fixed groups (tests/fixtures/trainer/exact_update.py): ranks running different
# numbers of micro-batch forwards per optimizer step (and, with the KL, of reference forwards: FSDP2 gathers its
# sharded reference once per step whatever each rank runs inside).
UPDATE_VARIANTS = {
    # reinforce_pp, bnpo, 2 mini-batches x mu 2, a k3 KL in the loss, and a step where the online filter left the
    # ranks uneven (3 groups: 2 on rank 0, 1 on rank 1).
    "sgd_uneven_kl": {"overrides": ["algorithm.advantage=reinforce_pp", "algorithm.loss_aggregation=bnpo",
                                    "algorithm.mini_batches=2", "algorithm.num_iterations=2", *KL,
                                    "trainer.prompts_per_step=4", "optimizer.name=sgd", "optimizer.lr=0.5"],
                      "drop": [2, 3]},
    # AdamW with weight decay, warm-up (the LR schedule reaches DeepSpeed's steps), clipping, and a step whose groups
    # all have zero advantage (no forward on any rank: the step still reduces and moves the weights).
    "adamw_flat_step": {"overrides": ["algorithm.loss_aggregation=dapo", "trainer.prompts_per_step=4",
                                      "optimizer.lr=1e-3", "optimizer.weight_decay=0.1", "optimizer.warmup_steps=3",
                                      "optimizer.max_grad_norm=0.05"],
                        "flat_step": 2},
    # A token budget (trainer.max_tokens_per_micro_batch=45): a group takes 1 to 4 forwards, so the ranks run
    # different numbers of backwards between two reductions.
    "sgd_token_budget": {"overrides": ["algorithm.loss_aggregation=grpo", "algorithm.mini_batches=2",
                                       "trainer.max_tokens_per_micro_batch=45", "trainer.prompts_per_step=4",
                                       "optimizer.name=sgd", "optimizer.lr=0.5"],
                         "drop": [1, 3]},
}


@pytest.fixture(scope="module")
def one_process_updates(tmp_path_factory, tiny_model_dir):
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 12, 0, tmp_path_factory.mktemp("data12"), image_size=56)
    out = tmp_path_factory.mktemp("one-updates")
    run([*launcher("one", None), str(FIXTURES / "exact_update.py"), str(CONFIG), str(data), str(out),
         json.dumps(UPDATE_VARIANTS)])
    return data, out


@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed"])
def test_two_processes_match_one_when_ranks_run_different_numbers_of_forwards(engine, one_process_updates, tmp_path,
                                                                             port_args):
    if engine == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'mmrl[deepspeed]')")
    data, single_dir = one_process_updates
    run([*launcher(engine, port_args), str(FIXTURES / "exact_update.py"), str(CONFIG), str(data), str(tmp_path),
         json.dumps(UPDATE_VARIANTS)])
    initial = _initial_weights()
    for name in UPDATE_VARIANTS:
        two = [json.loads((tmp_path / f"{name}-rank-{r}.json").read_text()) for r in (0, 1)]
        single = json.loads((single_dir / f"{name}-rank-0.json").read_text())
        assert [(r["rank"], r["world_size"]) for r in two] == [(0, 2), (1, 2)]
        assert two[0]["steps"] == two[1]["steps"] == single["steps"]
        one = torch.load(single_dir / f"{name}.pt")
        assert max_difference(one, initial) > 1e-4, f"{name}: the weights did not move"
        assert max_difference(one, torch.load(tmp_path / f"{name}.pt")) <= 1e-5, name


def test_fsdp2_save_resume_is_exact_and_the_checkpoint_is_a_plain_hf_directory(tmp_path, color_data, port_args):
    """FSDP2 (2 processes): 2 steps straight == 1 step, checkpoint, a new launch resuming for step 2 (weights and the
    gathered, sharded optimizer state both round-trip); the checkpoint loads with `from_pretrained`."""
    from transformers import AutoModelForImageTextToText

    base = train_args(color_data)
    runs = {"straight": ["trainer.max_steps=2", "trainer.save_final=false"],
            "first": ["trainer.max_steps=1", "trainer.save_final=true"],  # ends after writing checkpoint step-1
            "resumed": ["trainer.max_steps=2", "trainer.resume=auto", "trainer.save_final=false"]}
    for name, extra in runs.items():
        run_dir = tmp_path / ("straight" if name == "straight" else "shared") / "run"
        world_size_run("fsdp2", tmp_path / name, port_args, [f"trainer.output_dir={run_dir}", *base, *extra])
    straight, resumed = (torch.load(tmp_path / n / "final.pt") for n in ("straight", "resumed"))
    assert max_difference(straight, resumed) < 1e-6
    rows = read_metrics(tmp_path / "shared" / "run")
    assert [r["step"] for r in rows] == [1, 2]
    step1 = torch.load(tmp_path / "first" / "final.pt")
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "shared" / "run" / "checkpoints" / "step-1")
    got = {k: v.detach() for k, v in exported.named_parameters()}
    assert max_difference(got, step1) == 0.0


def test_an_adapter_checkpoint_maps_onto_the_live_lora_names_or_is_a_one_line_error(tmp_path, tiny_model_dir):
    """What FSDP2 loads when resuming LoRA: the saved adapter under the live peft names; an adapter of another
    rank is one line naming model.lora."""
    from mmrl.checkpoints.store import read_adapter_weights
    from mmrl.errors import UserError

    def lora_policy(rank: int):
        return load_policy(load_config(str(CONFIG), ["model.dtype=fp32", "model.lora.enabled=true",
                                                     f"model.lora.r={rank}"]).model).model

    policy = lora_policy(4)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()
    policy.save_pretrained(tmp_path / "adapter")
    got = read_adapter_weights(policy, tmp_path / "adapter" / "adapter_model.safetensors")
    live = dict(policy.named_parameters())
    assert got and all(".default." in k for k in got)
    assert {k for k in live if "lora_" in k} == set(got)
    assert all(torch.equal(v, live[k].detach()) for k, v in got.items())
    with pytest.raises(UserError, match="model.lora") as err:
        read_adapter_weights(lora_policy(2), tmp_path / "adapter" / "adapter_model.safetensors")
    assert "\n" not in str(err.value)


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
    from mmrl.errors import UserError
    from mmrl.parallel.launch import engine_from_launch

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
