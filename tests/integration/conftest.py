"""Fixtures the integration tests share."""

from __future__ import annotations

import pytest
import torch

from mmrl.config import load_config
from mmrl.models.loading import load_policy


@pytest.fixture(scope="module")
def policy():
    """(model, processor): the default tiny policy loaded for training, in fp32; one per test module, since tests
    switch its modes (activation checkpointing, train/eval). Seeded, so a module's random draws do not depend on
    which modules ran before it."""
    torch.manual_seed(0)
    loaded = load_policy(load_config(None).model)
    return loaded.model.float(), loaded.processor


@pytest.fixture(scope="session")
def real_family_models(tmp_path_factory):
    """`family -> tiny model folder` with the family's real interface (`build-tiny --like` on
    tests/fixtures/real_models), each built once, on first use, and shared by every test of the session."""
    from mmrl.models.tiny_like import build_like
    from tests.integration.real_families import assemble

    root = tmp_path_factory.mktemp("real-families")
    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = build_like(root / family, assemble(family, root / "src" / family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def real_family_policies(real_family_models):
    """`family -> (model, processor)` loaded once per session for inference (tests that train load their own)."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            torch.manual_seed(0)
            cfg = load_config(None, [f"model.name_or_path={real_family_models(family)}"]).model
            loaded = load_policy(cfg, for_training=False)
            cache[family] = (loaded.model, loaded.processor)
        return cache[family]

    return get
