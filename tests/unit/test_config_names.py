"""Config names are checked through each registry's list of names (`mmrl.config.names.NAME_SOURCES`)."""

from __future__ import annotations

import pytest

from mmrl.config import load_config
from mmrl.config.names import NAME_SOURCES
from mmrl.errors import ConfigError


def test_every_registry_lists_its_names_and_the_defaults_are_among_them():
    # A registry that moves or is renamed breaks its NAME_SOURCES entry: this test names which one.
    names = {kind: source() for kind, source in NAME_SOURCES.items()}
    assert all(names.values()), names
    cfg = load_config(None)
    assert cfg.algorithm.advantage in names["advantage estimator"]
    assert cfg.algorithm.loss_aggregation in names["loss aggregation"]
    assert cfg.algorithm.resolved_kl_estimator in names["KL estimator"]
    assert cfg.algorithm.policy_loss in names["policy loss"]
    assert cfg.rollout.backend in names["rollout backend"]
    assert {"accuracy", "format"} <= set(names["reward"])
    assert {"synthetic", "curriculum"} <= set(names["builder"])


@pytest.mark.parametrize("kind", ["advantage estimator", "loss aggregation", "policy loss"])
def test_every_registered_name_is_accepted(kind):
    field = {"advantage estimator": "algorithm.advantage", "loss aggregation": "algorithm.loss_aggregation",
             "policy loss": "algorithm.policy_loss"}[kind]
    for name in NAME_SOURCES[kind]():
        assert load_config(None, [f"{field}={name}"]) is not None


def test_a_name_in_a_yaml_file_is_reported_with_that_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algorithm:\n  loss_aggregation: mean\n")
    with pytest.raises(ConfigError, match=rf"^{path}: algorithm.loss_aggregation: unknown loss aggregation 'mean'"):
        load_config(path)


@pytest.mark.parametrize("name", ["mmrl.config.names", "mmrl.engine.faults"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
