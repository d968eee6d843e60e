"""The trainer's backend seam is typed: every in-process rollout backend is a `RolloutBackend` (the generation
layer's `GenerationBackend` plus `rollout`), and a generate-only backend (the HTTP client) is not one."""

from __future__ import annotations

import pytest
import torch

from mmrl.config import load_config
from mmrl.generation import GenerationBackend
from mmrl.generation.backends import make_backend
from mmrl.generation.http import OpenAIBackend
from mmrl.models.loading import load_policy
from mmrl.rl.experience import RolloutBackend


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    loaded = load_policy(load_config(None).model, for_training=False)
    return loaded.model, loaded.processor


@pytest.mark.parametrize("share_prompt", [True, False])
def test_hf_backends_are_rollout_backends(policy, share_prompt):
    backend = make_backend(*policy, share_prompt=share_prompt)
    assert isinstance(backend, RolloutBackend) and isinstance(backend, GenerationBackend)
    assert backend.model is policy[0]


def test_the_vllm_backend_class_has_the_rollout_methods():
    vllm_backend = pytest.importorskip("mmrl.generation.vllm_backend")  # the module imports vllm lazily
    for method in ("generate", "stream", "rollout"):
        assert callable(getattr(vllm_backend.VLLMBackend, method))


def test_a_generate_only_backend_is_not_a_rollout_backend():
    client = OpenAIBackend("http://127.0.0.1:9/v1", served_model="m")
    assert isinstance(client, GenerationBackend) and not isinstance(client, RolloutBackend)
