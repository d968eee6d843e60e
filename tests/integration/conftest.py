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
