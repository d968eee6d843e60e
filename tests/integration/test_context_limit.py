"""The HF backend refuses prompt + max_new_tokens beyond the model's context (max_position_embeddings), as vLLM
refuses prompt + max_tokens > max_model_len: one clear error before anything is sampled, never a silent cut, never a
decode past the context. `mmrl serve` answers it with a 400 and keeps serving."""

from __future__ import annotations

import pytest
import torch

from mmrl.config.model import ModelConfig
from mmrl.errors import UserError
from mmrl.generation import Prompt, SamplingParams
from mmrl.generation.hf import HFNaiveBackend, HFSharedPrefixBackend
from mmrl.generation.hf_context import ContextOverflow, context_length
from mmrl.models.loading import load_policy


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    torch.set_num_threads(1)
    return load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), for_training=False)


@pytest.fixture
def short_context(loaded):
    """The tiny model with its text context cut to `limit` tokens (restored afterwards)."""
    text = loaded.model.config.get_text_config()
    saved = text.max_position_embeddings

    def set_limit(limit: int) -> None:
        text.max_position_embeddings = limit

    yield set_limit
    text.max_position_embeddings = saved


PROMPT = Prompt.from_question("How many sides has a square?")


@pytest.mark.parametrize("backend_cls", [HFSharedPrefixBackend, HFNaiveBackend])
def test_huge_max_new_tokens_is_refused_before_sampling(loaded, backend_cls):
    backend = backend_cls(loaded.model, loaded.processor)
    assert context_length(loaded.model) == 32768
    with pytest.raises(ContextOverflow) as caught:
        backend.generate([PROMPT, PROMPT], SamplingParams(n=2, max_new_tokens=10**9, seed=0))
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert message.startswith("prompt 0: prompt of ")
    assert "max_new_tokens=1000000000" in message and "context of 32768 tokens" in message
    assert "at most " in message  # says how far to lower it


def test_exact_fit_runs_and_one_more_token_is_refused(loaded, short_context):
    backend = HFSharedPrefixBackend(loaded.model, loaded.processor)
    prompt_tokens = int(backend.encode(PROMPT)["input_ids"].shape[-1])
    short_context(prompt_tokens + 3)
    params = SamplingParams(n=2, temperature=0, max_new_tokens=3, min_new_tokens=3)
    group = backend.generate([PROMPT], params)[0]
    assert [c.n_tokens for c in group] == [3, 3]
    with pytest.raises(ContextOverflow, match=rf"prompt of {prompt_tokens} tokens \+ max_new_tokens=4 .* at most 3"):
        backend.generate([PROMPT], SamplingParams(n=2, temperature=0, max_new_tokens=4))


def test_prompt_longer_than_context_says_to_shorten_it(loaded, short_context):
    backend = HFNaiveBackend(loaded.model, loaded.processor)
    short_context(5)
    with pytest.raises(ContextOverflow, match="context of 5 tokens .*shorten the prompt"):
        backend.generate([PROMPT], SamplingParams(max_new_tokens=1))


def test_serve_answers_400_and_keeps_serving(loaded):
    from fastapi.testclient import TestClient

    from mmrl.generation.server import create_app

    app = create_app(HFSharedPrefixBackend(loaded.model, loaded.processor), "tiny")
    with TestClient(app) as client:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32768, "temperature": 0}
        refused = client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 400
        assert "context of 32768 tokens" in refused.json()["error"]["message"]
        # Streamed: refused before the stream's headers go out, not cut off inside the stream.
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 400 and "context of 32768 tokens" in streamed.json()["error"]["message"]
        ok = client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
        assert ok.status_code == 200
