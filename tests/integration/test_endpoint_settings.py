"""Endpoint-only settings (served_model, api_key_env, concurrency) given to a builder stage that runs a local model
are named in one warning, never dropped without a word; and an `api_key_env` that may be the key itself (pasted
there) is never echoed by a "not set" message."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from data_pipelines.cold_start.config import ColdStartConfig
from data_pipelines.cold_start.remote import check_api_key_env
from mmrl.cli import main
from mmrl.errors import UserError
from mmrl.generation.http import OpenAIBackend

SECRET = "sk-proj-Zq81mXv0aLk2Jd9TT4rw"
HEX_SECRET = "a3f9c0d1e2b4a5f6c7d8e9f0a1b2c3d4"  # a lower-case hex key is also a valid variable name


def _endpoint_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "only apply to an http(s) endpoint" in str(w.message)]


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"id": "q", "prompt": "How many? Answer with a number.", "answer": "3",
                                "task": "count"}) + "\n")
    return path


def test_rejection_on_a_local_model_warns_once_naming_the_ignored_flags(tiny_model_dir, tmp_path):
    base = ["build-data", "rejection", "--model", str(tiny_model_dir), "--data", str(_data(tmp_path)), "--k", "2",
            "--max-new-tokens", "4"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert _endpoint_warnings(record) == []  # nothing given, nothing to say
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main([*base, "--out", str(tmp_path / "flags"), "--served-model", "policy", "--api-key-env", SECRET,
                     "--concurrency", "16"]) == 0
    said = _endpoint_warnings(record)
    assert len(said) == 1
    assert "--served-model, --api-key-env, --concurrency" in said[0] and str(tiny_model_dir) in said[0]
    assert SECRET not in said[0]


def _cold_start(**stages) -> ColdStartConfig:
    return ColdStartConfig.model_validate({"data": "d.jsonl", "out": "o", "stages": stages})


def test_cold_start_local_stages_warn_once_and_endpoint_stages_do_not():
    from data_pipelines.cold_start.build import make_runners

    url = "http://127.0.0.1:9/v1"
    cfg = _cold_start(describe={"model": "tiny", "concurrency": 8, "api_key_env": SECRET},
                      reason={"model": url, "concurrency": 32, "served_model": "r1", "api_key_env": "REASONER_KEY"})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_runners(cfg)
    said = _endpoint_warnings(record)
    assert len(said) == 1
    # pseudo_cot (defaulted to a copy of describe) is not named twice; the endpoint stage is not named at all.
    assert "stages.describe.api_key_env, stages.describe.concurrency" in said[0]
    assert "pseudo_cot" not in said[0] and "stages.reason" not in said[0] and SECRET not in said[0]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_runners(_cold_start(describe={"model": "tiny", "max_new_tokens": 64}, reason={"model": url,
                                                                                         "concurrency": 32}))
    assert _endpoint_warnings(record) == []


@pytest.mark.parametrize("value", [SECRET, HEX_SECRET, "sk_live_51HqLyjWDarjtT1zdp7dc"])
def test_not_set_messages_never_echo_a_value_that_may_be_a_key(value, monkeypatch):
    monkeypatch.delenv(value, raising=False)
    with pytest.raises(UserError) as caught:
        OpenAIBackend("http://127.0.0.1:9/v1", api_key_env=value)
    assert value not in str(caught.value) and "api_key_env" in str(caught.value)
    with pytest.raises(UserError) as caught:
        check_api_key_env(value, "stages.reason.api_key_env", "http://127.0.0.1:9/v1")
    assert value not in str(caught.value) and "stages.reason.api_key_env" in str(caught.value)


def test_not_set_messages_name_a_conventional_variable(monkeypatch):
    monkeypatch.delenv("REASONER_API_KEY", raising=False)
    with pytest.raises(UserError, match="environment variable REASONER_API_KEY .* is not set"):
        OpenAIBackend("http://127.0.0.1:9/v1", api_key_env="REASONER_API_KEY")
    with pytest.raises(UserError, match="export REASONER_API_KEY=<key>"):
        check_api_key_env("REASONER_API_KEY", "stages.reason.api_key_env", "http://127.0.0.1:9/v1")
