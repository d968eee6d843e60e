"""The fixes a review predicted the first GPU run would need, shown on the CPU where the CPU can show them (issue:
the first GPU check). Each test names the waste or the error it guards against."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmrl.config import load_config
from mmrl.models.loading import load_policy
from mmrl.models.logprobs import completion_logprobs
from mmrl.models.placement import set_compute_dtype
from tests.integration.chat_prompts import image_prompt


@pytest.fixture(scope="module")
def bf16_lora_policy():
    """A LoRA policy on a bf16 base with non-zero adapters (B starts at zero: the merge would be invisible)."""
    torch.manual_seed(0)
    model = load_policy(
        load_config(None, ["model.dtype=bf16", "model.lora.enabled=true", "model.lora.r=4"]).model, device="cpu"
    ).model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


def _base_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "base_layer" in k}


def test_weight_sync_of_a_bf16_lora_base_leaves_the_base_bitwise_unchanged(bf16_lora_policy):
    """vLLM weight sync once per step: peft's merge/unmerge in bf16 rounds twice per round trip (the control below
    shows it drifts); the out-of-place merge never writes the base, and rounds the merged weight once."""
    from mmrl.generation.vllm_backend import policy_weights

    model = bf16_lora_policy
    base = _base_weights(model)
    assert base and all(v.dtype == torch.bfloat16 for v in base.values())
    for _ in range(5):
        synced = {k: v.clone() for k, v in policy_weights(model)}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    # the synced weight is the fp32 merge rounded once to bf16
    layer = model.base_model.model.model.language_model.layers[0].self_attn.q_proj
    want = (layer.base_layer.weight.float() + layer.get_delta_weight("default").float()).to(torch.bfloat16)
    assert torch.equal(synced["model.language_model.layers.0.self_attn.q_proj.weight"], want)

    control = copy.deepcopy(model)  # what the sync did before: merge_adapter() / unmerge_adapter() in place
    for _ in range(5):
        control.merge_adapter()
        control.unmerge_adapter()
    drifted = _base_weights(control)
    assert any(not torch.equal(drifted[k], v) for k, v in base.items())


class _OpLog(TorchDispatchMode):
    """Every aten op of the block with its output's dtype and shape (what ran, after autocast chose the dtypes)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, torch.dtype, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.ops.append((func.__name__, out.dtype, tuple(out.shape)))
        return out


def _group(processor, seed: int = 0):
    prompt = image_prompt(processor, 56, "what color?", seed=seed)
    ids = torch.randint(0, 1000, (4, 12), generator=torch.Generator().manual_seed(seed))
    return prompt, ids, torch.ones_like(ids)


@pytest.mark.parametrize("kind", ["fp32 weights + bf16 autocast", "bf16 base (LoRA)"])
def test_training_forward_runs_the_lm_head_in_bf16_and_only_the_log_softmax_in_fp32(kind, bf16_lora_policy):
    """The LM head's [tokens, vocab] matmul ran in fp32 outside autocast (slow on a GPU: no bf16 tensor cores, and an
    fp32 [tokens, vocab] product); now it runs in bf16, no fp32 copy of the head's weight is made, the chunk's
    logits alone are upcast, and the log-probs stay within bf16 tolerance of an fp32 forward."""
    torch.manual_seed(0)
    if kind == "bf16 base (LoRA)":
        model, processor = bf16_lora_policy, load_policy(load_config(None).model, device="cpu").processor
    else:
        loaded = load_policy(load_config(None, ["model.dtype=bf16"]).model, device="cpu")
        model, processor = loaded.model, loaded.processor
    vocab, hidden = model.get_output_embeddings().weight.shape
    prompt, ids, mask = _group(processor)
    with _OpLog() as log:
        logp = completion_logprobs(model, prompt, ids, mask)
    products = [op for op in log.ops if op[0].startswith(("mm", "addmm", "bmm", "matmul")) and op[2][-1] == vocab]
    assert products and all(dtype == torch.bfloat16 for _, dtype, _ in products), products
    assert not [op for op in log.ops if op[1] == torch.float32 and op[2] in ((vocab, hidden), (hidden, vocab))]
    assert logp.dtype == torch.float32

    reference = copy.deepcopy(model).float()
    set_compute_dtype(reference, torch.float32)
    with torch.no_grad():
        exact = completion_logprobs(reference, prompt, ids, mask)
    assert (logp - exact).abs().max() < 2e-2  # measured 5e-3 with the tiny preset (bf16: 8 significant bits)


@pytest.fixture(scope="module")
def mixed_policy():
    """fp32 weights under bf16 autocast (model.dtype=bf16 for training): what a GPU run trains."""
    torch.manual_seed(0)
    loaded = load_policy(load_config(None, ["model.dtype=bf16"]).model, device="cpu")
    return loaded.model, loaded.processor


def _rollout(model, processor, monkeypatch, cache_dtypes: list) -> object:
    from transformers import DynamicCache

    from mmrl.generation import SamplingParams
    from mmrl.generation.backends import make_backend

    update = DynamicCache.update

    def spy(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = update(self, key_states, value_states, layer_idx, *args, **kwargs)
        cache_dtypes.append((keys.dtype, values.dtype))
        return keys, values

    monkeypatch.setattr(DynamicCache, "update", spy)
    prompts = [image_prompt(processor, 56, "what color?", seed=0), image_prompt(processor, 84, "how many?", seed=1)]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0, logprobs=True)
    return make_backend(model, processor).rollout(prompts, params)


def test_a_bf16_rollout_keeps_its_kv_cache_in_bf16_and_samples_the_same_tokens(mixed_policy, monkeypatch):
    """RoPE's fp32 cos/sin left the keys of a bf16-autocast rollout in fp32 (the cache half again as big); stored in
    bf16 they are what the attention cast them to anyway, so the tokens and log-probs are the same bit for bit."""
    import mmrl.generation.hf_decode as hf_decode

    model, processor = mixed_policy
    stored: list = []
    batch = _rollout(model, processor, monkeypatch, stored)
    assert stored and set(stored) == {(torch.bfloat16, torch.bfloat16)}

    before: list = []  # the model's own cache, as the rollout used before
    monkeypatch.setattr(hf_decode, "rollout_cache", lambda model: None)
    plain = _rollout(model, processor, monkeypatch, before)
    assert (torch.float32, torch.bfloat16) in set(before)  # the waste this fixes
    assert torch.equal(batch.completion_ids, plain.completion_ids)
    assert torch.equal(batch.logprobs, plain.logprobs)


# Ops that make the host wait for the device (on a GPU): a tensor read as a Python number, or an op whose output
# size depends on tensor values.
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select"}


class _HostSyncs(TorchDispatchMode):
    """Records every op of the block that would sync a CUDA stream, with `where()` (a caller's label) at that moment.
    On the CPU nothing waits, but the same ops run: what syncs on a GPU is visible here."""

    def __init__(self, where) -> None:
        super().__init__()
        self.where = where
        self.seen: list[tuple[object, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        indices = args[1] if name in ("index", "index_put_") and len(args) > 1 else ()
        boolean_index = any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ())
        if name in _SYNC_OPS or boolean_index or str(func) == "aten.repeat_interleave.Tensor":
            self.seen.append((self.where(), name))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        original = self._tolist = torch.Tensor.tolist

        def tolist(tensor):
            self.seen.append((self.where(), "tolist"))
            return original(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


@pytest.fixture(scope="module")
def early_eos_model(policy):
    """A copy of the tiny policy whose EOS logit is pushed up: sampled rows end at varied steps (rows leave the batch)."""
    model, processor = policy
    model = copy.deepcopy(model)
    prompt = image_prompt(processor, 112, "how many shapes?", 0)
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        direction = model.model(**prompt).last_hidden_state[0].mean(0)
        model.lm_head.weight[eos] = direction * (4.0 / direction.dot(direction))
    model.model.rope_deltas = None
    return model, processor


def test_the_decode_loop_reads_the_device_only_every_sync_every_steps(early_eos_model, monkeypatch):
    """A host sync per decode step (`bool(still.any())`, `.nonzero()`, `torch.unique(...).tolist()`, the entropy's
    `float`) stalls the GPU between steps. mmrl's loop now looks at the device once every SYNC_EVERY steps (prompts of
    three lengths, per-prompt streams, rows finishing at varied steps: every branch of the loop runs)."""
    import mmrl.generation.hf_decode as hf_decode
    from mmrl.generation import SamplingParams
    from mmrl.generation.hf import HFSharedPrefixBackend
    from tests.integration.chat_prompts import text_prompt

    model, processor = early_eos_model
    state = {"step": 0, "in_model": False}
    pick, forward = hf_decode._pick, hf_decode.continue_from

    def counted_pick(*args, **kwargs):  # called once per decode step
        state["step"] += 1
        return pick(*args, **kwargs)

    def model_forward(*args, **kwargs):
        state["in_model"] = True
        try:
            return forward(*args, **kwargs)
        finally:
            state["in_model"] = False

    monkeypatch.setattr(hf_decode, "_pick", counted_pick)
    monkeypatch.setattr(hf_decode, "continue_from", model_forward)
    prompts = [
        image_prompt(processor, 112, "how many shapes?", 0),
        text_prompt(processor, "what is 2 + 3?"),
        image_prompt(processor, 56, "colour?", 1),
    ]
    params = SamplingParams(n=4, max_new_tokens=20, temperature=0.9, top_p=0.95, top_k=300, logprobs=True)
    with _HostSyncs(lambda: (state["step"], state["in_model"])) as syncs:
        batch = HFSharedPrefixBackend(model, processor).rollout(prompts, params, prompt_seeds=[1, 2, 3])
    lengths = batch.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 3 and int(lengths.min()) < hf_decode.SYNC_EVERY  # rows left at varied steps
    steps = state["step"]
    loop = {step for (step, in_model), _ in syncs.seen if not in_model and 0 < step < steps}
    assert loop and all(step % hf_decode.SYNC_EVERY == 0 for step in loop), sorted(loop)
    # transformers' own: with left padding in the batch, its SDPA mask code asks whether the padding mask is all ones
    # (`_ignore_causal_mask_sdpa`); mmrl passes no mask once no live row is padded
    in_model = [name for (_, inside), name in syncs.seen if inside]
    assert set(in_model) <= {"_local_scalar_dense"} and len(in_model) < steps


def test_processes_waiting_for_the_main_one_outlast_the_process_groups_timeout(port_args):
    """The main process evaluates and saves alone; the others wait in `barrier` / `all_gather_objects`. On the default
    group (NCCL on GPUs: 10 minutes) the wait timed out; through the host group it lasts `MAIN_ALONE_TIMEOUT`. Shown
    with a gloo default group given 3 seconds and a main process busy 4 seconds, twice."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    port = port_args()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(root),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "WORLD_SIZE": "2",
    }
    script = root / "tests" / "fixtures" / "trainer" / "wait_for_main.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "4"],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    lines = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [line["views"] for line in lines] == [[0, 1], [0, 1]]
    assert {line["host_backend"] for line in lines} == {"gloo"}


def test_adamw_state_allocated_before_the_engine_starts_trains_exactly_as_the_lazy_one(policy):
    """A colocated vLLM engine checks the free memory when it starts; AdamW's moments, made lazily at the first step,
    came after that check (and the first wake-up after step 1 ran out of memory). `allocate_state` makes them first:
    both moments of every parameter exist, the parameters are unchanged, and three steps later the weights and state
    are those of the lazily made optimizer, bit for bit."""
    from mmrl.config.optim import OptimizerConfig
    from mmrl.optim import allocate_state, build_optimizer

    model, _ = policy
    cfg = OptimizerConfig(lr=1e-2, weight_decay=0.1)
    eager_model, lazy_model = copy.deepcopy(model), copy.deepcopy(model)
    eager = build_optimizer([p for p in eager_model.parameters() if p.requires_grad], cfg)
    lazy = build_optimizer([p for p in lazy_model.parameters() if p.requires_grad], cfg)
    allocate_state(eager)
    params = [p for p in eager_model.parameters() if p.requires_grad]
    assert all(
        eager.state[p]["exp_avg"].shape == p.shape and eager.state[p]["exp_avg_sq"].shape == p.shape for p in params
    )
    assert all(torch.equal(a, b) for a, b in zip(eager_model.parameters(), model.parameters()))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(eager_model.parameters(), lazy_model.parameters()):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=gen)
                b.grad = a.grad.clone()
        eager.step()
        lazy.step()
    assert all(torch.equal(a, b) for a, b in zip(eager_model.parameters(), lazy_model.parameters()))
    lazy_params = [p for p in lazy_model.parameters() if p.requires_grad]
    for a, b in zip(params, lazy_params):
        assert all(torch.equal(eager.state[a][k], lazy.state[b][k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_the_update_reads_nothing_from_the_device_between_its_forwards_and_backwards(tmp_path, monkeypatch):
    """Between the first training forward of a step and its last backward, the update's own code (rl/update.py,
    rl/step_metrics.py, rl/micro_batches.py) made the host wait at every micro-batch: whether its rows' advantages were all zero, which
    rows it held (for their texts). Both are now known on the host before the first forward. Two groups cut into
    token-budget micro-batches, no KL term (the zero-advantage check is not short-cut) and rollout-engine log-probs.
    (The loss functions' own float() metrics and transformers' M-RoPE index are other modules' syncs.)"""
    import sys
    import traceback
    from pathlib import Path

    from data_pipelines.synthetic import build_synthetic
    from mmrl.rl.trainer import GRPOLoop
    from mmrl.rl.training_batch import training_batch
    from mmrl.rl.update import policy_update

    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "tests" / "fixtures" / "trainer"))
    from fixed_groups import fixed_group

    data = build_synthetic(["color"], 4, 0, tmp_path / "data", image_size=56)
    overrides = [
        f"data.train={data}",
        f"trainer.output_dir={tmp_path / 'run'}",
        "trainer.report_to=[jsonl]",
        "trainer.progress=false",
        "model.dtype=fp32",
        "trainer.device=cpu",
        "algorithm.beta=0.0",
        "trainer.max_tokens_per_micro_batch=60",
    ]
    trainer = GRPOLoop(load_config(root / "configs" / "tests" / "grpo_tiny.yaml", overrides))
    groups = [fixed_group(trainer, 0, i, sampler_logp=True) for i in range(2)]
    events: list[tuple[str, str]] = []
    logprobs, backward = trainer.run.logprobs, torch.Tensor.backward

    def forward(*args, **kwargs):
        events.append(("forward", ""))
        return logprobs(*args, **kwargs)

    def counted_backward(self, *args, **kwargs):
        events.append(("backward", ""))
        return backward(self, *args, **kwargs)

    def where() -> str:  # called once per sync: recorded in order with the forwards and backwards
        mmrl_frames = [f.filename for f in traceback.extract_stack() if f"{root}/mmrl/" in f.filename]
        place = mmrl_frames[-1].removeprefix(f"{root}/") if mmrl_frames else "?"
        events.append(("sync", place))
        return place

    trainer.run.logprobs = forward
    monkeypatch.setattr(torch.Tensor, "backward", counted_backward)
    with _HostSyncs(where):
        stage = trainer.schedule.stage_at(0)
        policy_update(trainer.run, training_batch(trainer.run, groups, stage, trainer.reference), stage)
    kinds = [kind for kind, _ in events]
    first, last = kinds.index("forward"), len(kinds) - 1 - kinds[::-1].index("backward")
    assert kinds.count("backward") >= 4  # the groups really were cut into several micro-batches
    ours = [
        place
        for kind, place in events[first:last]
        if kind == "sync" and place in ("mmrl/rl/update.py", "mmrl/rl/step_metrics.py", "mmrl/rl/micro_batches.py")
    ]
    assert not ours, ours
    del sys.modules["fixed_groups"]


def test_a_prompt_forwarded_again_reuses_its_m_rope_positions(policy, monkeypatch):
    """`get_rope_index` reads token kinds and image grids on the host (several syncs per call), and a step forwards
    one prompt many times (old and reference log-probs, every training micro-batch): it now runs once per prompt
    tensor, with the same log-probs; another prompt gets its own."""
    model, processor = policy
    core = type(model.model)
    calls = []
    original = core.get_rope_index

    @functools.wraps(original)  # its signature too: the prefix route checks it takes mm_token_type_ids
    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(core, "get_rope_index", counted)
    prompt, ids, mask = _group(processor, seed=5)
    first = completion_logprobs(model, prompt, ids, mask)
    again = completion_logprobs(model, prompt, ids, mask)
    assert len(calls) == 1 and torch.equal(first, again)
    other, _, _ = _group(processor, seed=6)
    completion_logprobs(model, other, ids, mask)
    assert len(calls) == 2


def test_a_stream_sees_no_token_after_its_end(policy):
    """Streaming reads every token on the host anyway, so the loop looks at every step there: the row leaves at its
    stop token and the stream ends with it (between two looks a finished row decodes throwaway tokens)."""
    from mmrl.generation import SamplingParams
    from mmrl.generation.hf import HFSharedPrefixBackend

    model, processor = policy
    backend = HFSharedPrefixBackend(model, processor)
    prompt = image_prompt(processor, 56, "what colour?", 2)
    first = backend.rollout([prompt], SamplingParams(n=1, max_new_tokens=6, temperature=0.0))
    stop = int(first.completion_ids[0, 2])
    streamed: list[int] = []
    params = SamplingParams(n=1, max_new_tokens=12, temperature=0.0, stop_token_ids=(stop,))
    batch = backend.rollout([prompt], params, on_token=streamed.append)
    ends = first.completion_ids[0, :3].tolist()
    assert stop not in ends[:2]  # the stop token first comes third
    assert batch.completion_ids[0][batch.completion_mask[0].bool()].tolist() == ends == streamed


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_rows_finishing_between_two_looks_return_what_a_look_at_every_step_returns(
    early_eos_model, monkeypatch, temperature
):
    """Between two looks a finished row keeps decoding throwaway tokens: none of them may reach its completion, its
    length, its finished flag or its log-probs. Greedy: the same batch as a loop that looks at every step. Sampled: the
    draws differ by design (finished rows still draw), so each row must end at its first stop token and hold nothing
    after it."""
    import mmrl.generation.hf_decode as hf_decode
    from mmrl.generation import SamplingParams
    from mmrl.generation.hf import HFSharedPrefixBackend
    from tests.integration.chat_prompts import text_prompt

    model, processor = early_eos_model
    eos = processor.tokenizer.eos_token_id
    prompts = [image_prompt(processor, 112, "how many shapes?", 0), text_prompt(processor, "what is 2 + 3?")]
    params = SamplingParams(n=4, max_new_tokens=20, temperature=temperature, logprobs=True)

    def rollout():
        return HFSharedPrefixBackend(model, processor).rollout(prompts, params, prompt_seeds=[1, 2])

    batched = rollout()
    mask = batched.completion_mask.bool()
    lengths = mask.sum(1)
    assert int(lengths.min()) % hf_decode.SYNC_EVERY != 0 and int(lengths.min()) < params.max_new_tokens
    for row in range(mask.shape[0]):
        ids = batched.completion_ids[row][mask[row]].tolist()
        assert eos not in ids[:-1], ids  # nothing decoded after the end of the turn
        if len(ids) < params.max_new_tokens:
            assert ids[-1] == eos
    assert (batched.logprobs[~mask] == 0).all() and (batched.logprobs[mask] < 0).all()
    if temperature == 0.0:
        monkeypatch.setattr(hf_decode, "SYNC_EVERY", 1)
        every_step = rollout()
        assert torch.equal(batched.completion_ids, every_step.completion_ids)
        assert torch.equal(batched.completion_mask, every_step.completion_mask)
        torch.testing.assert_close(batched.logprobs, every_step.logprobs, rtol=0, atol=1e-5)
