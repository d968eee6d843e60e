"""Settings saved by an older mmrl (a pipeline step's DONE.json, a checkpoint's segment config) against the settings
now: a field added since, at its default, is no change; the same field set otherwise, or any other difference, is."""

from __future__ import annotations

import json

import pytest
import yaml

from mmrl.config import MMRLConfig, load_config
from mmrl.config.added_fields import without_added_defaults
from mmrl.config.workflow import PipelineStep
from mmrl.errors import UserError
from mmrl.runs.segments import SEGMENTS, check_resume_config
from mmrl.workflow.plan import config_digest, same_settings, step_settings

STAGES = "stages=[{name: a, steps: 2}, {name: b, steps: 3}]"


def _older(settings: dict) -> dict:
    """As an mmrl before trainer.max_sampled_tokens and stages[].reset_optimizer wrote them."""
    old = json.loads(json.dumps(settings))
    del old["trainer"]["max_sampled_tokens"]
    for stage in old["stages"]:
        del stage["reset_optimizer"]
    return old


def test_fields_added_at_their_default_are_dropped_at_every_depth_and_nothing_else():
    now = load_config(None, [STAGES]).model_dump(mode="json")
    old = _older(now)
    assert without_added_defaults(old, now, MMRLConfig) == old
    changed = load_config(None, ["stages=[{name: a, steps: 2}, {name: b, steps: 3, reset_optimizer: true}]",
                                 "trainer.max_sampled_tokens=9"]).model_dump(mode="json")
    kept = without_added_defaults(old, changed, MMRLConfig)
    assert kept["trainer"]["max_sampled_tokens"] == 9 and kept["stages"][1]["reset_optimizer"] is True
    assert "reset_optimizer" not in kept["stages"][0]  # the stage that left it at its default
    # a key the model does not know, or a required one, is never taken for an added default
    assert without_added_defaults({}, {"nope": None}, MMRLConfig) == {"nope": None}
    assert without_added_defaults({}, {"name": "a"}, PipelineStep) == {"name": "a"}


def test_a_finished_pipeline_step_from_before_a_new_field_is_the_same_step():
    step = PipelineStep(name="grpo", kind="train")
    config = load_config(None, [STAGES])
    now = step_settings(config, step)
    done = {"config_digest": "0" * 16, "settings": _older(now)}
    assert same_settings(done, config_digest(config, step), now)
    other = load_config(None, [STAGES, "trainer.max_sampled_tokens=100"])
    assert not same_settings(done, config_digest(other, step), step_settings(other, step))
    lr = load_config(None, [STAGES, "optimizer.lr=0.5"])
    assert not same_settings(done, config_digest(lr, step), step_settings(lr, step))


def test_a_resume_from_before_a_new_field_is_allowed_unless_the_field_is_set(tmp_path):
    config = load_config(None, [STAGES, f"trainer.output_dir={tmp_path}"])
    (tmp_path / SEGMENTS).mkdir()
    (tmp_path / SEGMENTS / "step-0.yaml").write_text(yaml.safe_dump(_older(config.model_dump(mode="json"))))
    checkpoint = tmp_path / "checkpoints" / "step-2"
    checkpoint.mkdir(parents=True)
    check_resume_config(config, tmp_path, checkpoint)
    budget = load_config(None, [STAGES, f"trainer.output_dir={tmp_path}", "trainer.max_sampled_tokens=100"])
    with pytest.raises(UserError, match=r"another config .*trainer\.max_sampled_tokens"):
        check_resume_config(budget, tmp_path, checkpoint)


def test_defaults_compare_as_config_text_and_dict_values_are_not_sections():
    from mmrl.config.added_fields import _models, _text
    from mmrl.config.rl import RewardSpec

    assert _text([RewardSpec(name="accuracy")]) == json.dumps([RewardSpec(name="accuracy").model_dump(mode="json")],
                                                              sort_keys=True)
    assert _text(False) != _text(0) and _text(1) != _text(1.0)
    assert _models(dict[str, RewardSpec]) == [] and _models(list[RewardSpec] | None) == [RewardSpec]
    # an added list-of-sections field at its default is forgiven; `rewards` left out of an old config, for example
    now = MMRLConfig().model_dump(mode="json")
    old = {k: v for k, v in now.items() if k != "rewards"}
    assert without_added_defaults(old, now, MMRLConfig) == old
