"""Config names are checked through each registry's list of names (`mmrl.preflight.NAME_SOURCES`)."""

from __future__ import annotations

import pytest

from mmrl.errors import ConfigError, UserError
from mmrl.preflight import NAME_SOURCES, load_config


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


@pytest.mark.parametrize("name", ["mmrl.preflight", "mmrl.faults"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_a_coordinate_rewards_pred_frame_is_checked_at_config_load_and_by_the_composite():
    from mmrl.rewards.composite import RewardComposite

    with pytest.raises(ConfigError, match=r"^command line: stages.0.rewards.0.kwargs: reward 'iou': kwargs.pred_frame "
                       r"'auto' is not a frame; use one of pixel, input_pixel, norm1000, norm1"):
        load_config(None, ["stages=[{name: a, steps: 1, rewards: [{name: iou, kwargs: {pred_frame: auto}}]}]"])
    with pytest.raises(UserError, match="kwargs.pred_frame 'percent' is not a frame"):
        RewardComposite([{"name": "point_in_box", "kwargs": {"pred_frame": "percent"}}], workers=0)
    assert load_config(None, ["rewards=[{name: iou, kwargs: {pred_frame: norm1000}}]"]) is not None


def test_the_config_room_checks_types_but_leaves_names_to_preflight():
    from mmrl.config import load_config as typed_only

    assert typed_only(None, ["algorithm.loss_aggregation=mean"]).algorithm.loss_aggregation == "mean"
    with pytest.raises(ConfigError, match="rollout.group_size"):
        typed_only(None, ["rollout.group_size=1"])
