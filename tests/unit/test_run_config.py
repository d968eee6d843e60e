"""A run's segment configs (mmrl/engine/run_config.py): which config trained a checkpoint, and what a resume changes."""

from __future__ import annotations

import pytest

from mmrl.config import load_config
from mmrl.engine.run_config import changed_fields, check_resume_config, config_before, save_segment_config
from mmrl.errors import UserError


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
    allowed = load_config(None, ["optimizer.lr=5e-3", "trainer.resume_allow_changes=[optimizer]", "trainer.max_steps=9"])
    check_resume_config(allowed, tmp_path, tmp_path / "checkpoints" / "step-6")  # a section, and the run's length
