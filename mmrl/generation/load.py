"""`load_backend`: a model name, path or server URL to a ready `GenerationBackend`."""

from __future__ import annotations

from typing import Any

from mmrl.generation.types import GenerationBackend


def is_server_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def load_backend(model: str, *, device: str = "auto", dtype: str = "auto", **kw: Any) -> GenerationBackend:
    """A backend for `model`.

    - a preset name (`tiny`, `small`, ...), a local checkpoint directory or a hub id: the in-process HF backend
      (shared-prefix sampling where the architecture allows). `kw`: `share_prompt` (default True), `data_cfg`
      (image resize and prompt template; default `DataConfig()`).
    - an `http(s)://host:port/v1` URL of an OpenAI-compatible server (`mmrl serve`, vLLM, a provider): the HTTP
      client backend. `kw`: `served_model` (the model name the server expects; default: the server's first model),
      `api_key_env` (the name of the environment variable holding the key; the key itself is never logged),
      `concurrency`, `max_retries`, `timeout`.
    """
    if is_server_url(model):
        from mmrl.generation.http import OpenAIBackend

        return OpenAIBackend(model, **kw)
    from mmrl.config.data import DataConfig
    from mmrl.config.model import ModelConfig
    from mmrl.generation.backends import make_backend
    from mmrl.models.loading import load_policy

    model_cfg = ModelConfig(name_or_path=model, dtype=dtype)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_policy(model_cfg, device=device, for_training=False)
    return make_backend(loaded.model, loaded.processor, share_prompt=kw.pop("share_prompt", True),
                        data_cfg=kw.pop("data_cfg", None) or DataConfig())
