"""`trainer.report_to` accepts wandb and trackio: validated by the config, import-guarded, offline when asked."""

from __future__ import annotations

import importlib.util
import json

import pytest

from mmrl.config import load_config
from mmrl.errors import ConfigError, UserError
from mmrl.runs.logger import RunLogger
from mmrl.runs.trackers import open_trackers


def test_config_accepts_the_trackers_and_names_the_valid_ones():
    cfg = load_config(None, ["trainer.report_to=[jsonl, wandb, trackio]"])
    assert cfg.trainer.report_to == ["jsonl", "wandb", "trackio"]
    with pytest.raises(ConfigError, match="report_to.*must be one of"):
        load_config(None, ["trainer.report_to=[wandbb]"])


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_missing_tracker_is_a_one_line_install_hint(name, tmp_path):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")
    with pytest.raises(UserError, match=f"'{name}' is not installed; pip install {name}"):
        open_trackers(["jsonl", name], tmp_path)
    assert open_trackers(["jsonl", "tensorboard"], tmp_path) == []


def test_wandb_offline_run_gets_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "config.yaml").write_text("name: t\n")
    logger = RunLogger(tmp_path, ["jsonl", "wandb"], progress=False)
    logger.log(1, {"loss": 0.5, "stage_name": "main"})
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.5
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # offline mode honoured: nothing was sent
