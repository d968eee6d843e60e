"""`mmrl build-data cold-start` set-up: bad configs are one line, the shipped configs validate, the tiny model runs
every stage in process and behind `mmrl serve`, and a torn cache line is cut and redone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mmrl.cli import main
from tests.integration.cold_start_server import STAGE_MARK, write_config, write_dataset


@pytest.mark.parametrize(("override", "message"), [
    ("stages.reason.concurrency=0", "stages.reason.concurrency"),
    ("stages.reason.temprature=1", "unknown key 'stages.reason.temprature'"),
    ("stages.describe.prompt=/nonexistent.txt", "no such file"),
])
def test_bad_config_is_one_line(tmp_path, capsys, override, message):
    cfg = write_config(tmp_path, tmp_path / "d.jsonl", tmp_path / "out", "http://127.0.0.1:9/v1")
    assert main(["build-data", "cold-start", str(cfg), override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_against_mmrl_serve_with_the_tiny_preset_for_both_roles(tiny_model_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "mmrl.cli", "serve", "--model", str(tiny_model_dir), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "mmrl serve exited"
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mmrl serve did not come up"
                time.sleep(0.2)
        script = {f"q{i}": "good" for i in range(3)}
        answers = {q: "3" for q in script}
        data = write_dataset(tmp_path, script, answers)
        out = tmp_path / "out"
        url = f"http://127.0.0.1:{port}/v1"
        cfg = write_config(tmp_path, data, out, url)
        # The shipped default prompts, 8 new tokens a stage: the tiny model's random text is rejected, never written.
        overrides = [f"stages.{s}.prompt=null" for s in STAGE_MARK.values()]
        overrides += [f"stages.{s}.max_new_tokens=8" for s in STAGE_MARK.values()]
        overrides += [f"stages.{s}.timeout=60" for s in STAGE_MARK.values()]
        assert main(["build-data", "cold-start", str(cfg), *overrides]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["input"] == 3 and report["kept"] + sum(report["rejected"].values()) == 3
        assert report["kept"] == 0 and (out / "train.jsonl").read_text() == ""
        # The server's usage counts: at most 8 tokens an attempt, 2 attempts per stage.
        assert 0 < report["tokens_per_stage"]["pseudo_cot"] <= 3 * 2 * 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("name", ["offline.yaml", "two_stage.yaml"])
def test_shipped_cold_start_configs_validate(name):
    from data_pipelines.cold_start.config import load_cold_start_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_cold_start_config(str(root / "configs" / "cold_start" / name))
    assert cfg.stages.pseudo_cot.model == cfg.stages.describe.model  # the VLM runs stages 1 and 2


def test_offline_config_with_the_in_process_tiny_model(tiny_model_dir, tmp_path):
    """The shipped offline config: every stage through `load_backend` in this process, no server."""
    from data_pipelines.synthetic import build_synthetic

    root = Path(__file__).resolve().parents[2]
    data = build_synthetic(["count"], 2, 0, tmp_path / "d", forms=["open"], image_size=28)
    out = tmp_path / "out"
    assert main(["build-data", "cold-start", str(root / "configs/cold_start/offline.yaml"), f"data={data}",
                 f"out={out}", "stages.describe.max_new_tokens=4", "stages.reason.max_new_tokens=4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["input"] == 2 and report["kept"] + sum(report["rejected"].values()) == 2
    # Local completions count their own token ids: at most 4 per attempt, 2 attempts.
    assert 0 < report["tokens_per_stage"]["pseudo_cot"] <= 2 * 2 * 4


def test_a_torn_last_cache_line_is_cut_and_the_stage_redone(tmp_path):
    from data_pipelines.cold_start.cache import StageCache

    path = tmp_path / "cache.jsonl"
    cache = StageCache(path)
    cache.put("a", "describe", "fp", ok=True, text="x", tokens=1)
    cache.close()
    with open(path, "a") as handle:
        handle.write('{"id": "b", "stage": "desc')  # killed mid-write
    cache = StageCache(path)
    assert cache.get("a", "describe", "fp") is not None and cache.get("b", "describe", "fp") is None
    cache.put("b", "describe", "fp", ok=True, text="y", tokens=1)
    cache.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]
