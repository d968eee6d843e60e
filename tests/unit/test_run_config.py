"""A run's segment configs (mmrl/runs/segments.py): which config trained a checkpoint, and what a resume changes."""

from __future__ import annotations

import pytest

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.runs.segments import changed_fields, check_resume_config, config_before, save_segment_config


def test_changed_fields_names_each_differing_value_by_its_dotted_name():
    old = {"optimizer": {"lr": 1e-4, "betas": [0.9, 0.99]}, "data": {"train": [{"path": "a.jsonl"}]}}
    new = {"optimizer": {"lr": 5e-3, "betas": [0.9, 0.99]}, "data": {"train": [{"path": "b.jsonl"}]}, "x": 1}
    assert changed_fields(old, new) == ["optimizer.lr", "data.train", "x"]
    assert changed_fields(old, old) == []


def test_the_config_before_a_checkpoint_is_the_segment_that_trained_it(tmp_path):
    first = load_config(None, ["optimizer.lr=1e-4"])
    second = load_config(None, ["optimizer.lr=5e-3"])
    save_segment_config(first, tmp_path, 0)
    save_segment_config(second, tmp_path, 6)  # resumed at step 6 with another lr
    assert config_before(tmp_path, 6).name == "step-0.yaml"  # steps 1-6 ran with the first config
    assert config_before(tmp_path, 9).name == "step-6.yaml"
    (tmp_path / "checkpoints" / "step-6").mkdir(parents=True)
    with pytest.raises(UserError, match=r"optimizer.lr \(0.0001 -> 0.005\).*resume_allow_changes=\[optimizer.lr\]"):
        check_resume_config(second, tmp_path, tmp_path / "checkpoints" / "step-6")
    allowed = load_config(
        None, ["optimizer.lr=5e-3", "trainer.resume_allow_changes=[optimizer]", "trainer.max_steps=9"]
    )
    check_resume_config(allowed, tmp_path, tmp_path / "checkpoints" / "step-6")  # a section, and the run's length


def test_a_changed_dataset_path_is_shown_not_its_shared_field_names(tmp_path):
    # the whole list, cut at 40 characters, read "data.train ([{box_format: null, ... -> [{box_format: null, ...)"
    first = load_config(None, ["data.train=data/synth/train.jsonl"])
    second = load_config(None, ["data.train=runs/quickstart/data/a_long_folder_name_for_the_data/train.jsonl"])
    save_segment_config(first, tmp_path, 0)
    (tmp_path / "checkpoints" / "step-4").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        check_resume_config(second, tmp_path, tmp_path / "checkpoints" / "step-4")
    shown = (
        "data.train ([0].path: data/synth/train.jsonl -> runs/quickstart/data/a_long_...name_for_the_data/train.jsonl)"
    )
    assert shown in str(err.value) and "resume_allow_changes=[data.train]" in str(err.value)
