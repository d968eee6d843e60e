"""`mmrl build-data cold-start` against a scripted failure server on 127.0.0.1 (malformed replies, 500s, 429s, slow
replies, dropped connections, wrong answers): the output is exactly the verified subset, a kill -9 mid-build resumes
without loss or duplicates, and the API key comes from the environment only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from mmrl.cli import main
from mmrl.data.dataset import load_samples
from tests.integration.cold_start_server import FailureServer, think_for, write_config, write_dataset

SCRIPT = {"q0": "good", "q1": "wrong", "q2": "malformed", "q3": "e500", "q4": "e429_once", "q5": "slow",
          "q6": "truncated", "q7": "drop", "q8": "empty", "q9": "dup", "q10": "repeat", "q11": "mixed",
          "q12": "good", "q13": "garbage"}
EXPECTED_REJECTED = {"wrong_answer": 1, "reason:no_think": 1, "reason:truncated": 1, "pseudo_cot:empty": 1,
                     "near_duplicate": 1, "repetition": 1, "language_mix": 1}
# No answer at all (500s after retries, a timeout, a dropped connection): failures, not rejections.
EXPECTED_FAILED = {"describe:http_500": 1, "pseudo_cot:timeout": 1, "describe:connection": 1,
                   "describe:bad_response": 1}


def test_failure_server_output_is_exactly_the_verified_subset(tmp_path, capsys):
    answers = {q: str(3 + i % 4) for i, q in enumerate(SCRIPT)}
    answers["q9"] = answers["q0"]  # the duplicate is correct too: only the near-duplicate rule rejects it
    server = FailureServer(SCRIPT, answers)
    try:
        data = write_dataset(tmp_path, SCRIPT, answers)
        out = tmp_path / "out"
        cfg = write_config(tmp_path, data, out, server.url)
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        kept = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
        assert [r["id"] for r in kept] == ["q0", "q4", "q12"]
        for record in kept:
            qid = record["id"]
            assert record["response"] == f"<think> {think_for(qid)} </think><answer> {answers[qid]} </answer>"
            assert record["images"] == [str((tmp_path / "images" / f"{qid}.png").resolve())]  # referenced
            assert record["meta"]["cold_start"]["description"] == f"There are shapes in {qid}."
        assert not (out / "images").exists()
        report = json.loads((out / "report.json").read_text())
        assert report["rejected"] == EXPECTED_REJECTED and report["failed"] == EXPECTED_FAILED
        assert report["kept"] + sum(report["rejected"].values()) + sum(report["failed"].values()) == len(SCRIPT)
        assert report["input"] == len(SCRIPT)
        assert (out / "lengths.png").stat().st_size > 0
        # Retries: 500 and timeout -> 2 attempts x (1 + max_retries) requests; the 429 is retried once and kept.
        assert server.requests[("q3", "describe")] == 4 and server.requests[("q4", "reason")] == 2
        assert server.requests[("q2", "reason")] == 2  # malformed: the stage's 2 attempts, then rejected
        # The stage after a failure never runs; tokens are the server's usage counts.
        assert ("q3", "reason") not in server.requests
        assert report["tokens_per_stage"]["reason"] > 0
        # The SFT set reads back as native records with the target as response.
        samples = load_samples(str(out / "train.jsonl"))
        assert [s.response for s in samples] == [r["response"] for r in kept]
        # A re-run asks again for the 4 items that got no answer, and only for them; rejections are final. All 4
        # fail again: exit 1 with one line naming the endpoint and what to do.
        before, train_before = Counter(server.requests), (out / "train.jsonl").read_bytes()
        capsys.readouterr()
        assert main(["build-data", "cold-start", str(cfg)]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"mmrl build-data: error: no answer from {server.url} for any of the 4 items")
        assert "re-run" in err
        asked_again = {key for key in server.requests if server.requests[key] != before[key]}
        assert {qid for qid, _ in asked_again} == {"q3", "q5", "q7", "q13"}
        assert (out / "train.jsonl").read_bytes() == train_before
        # The endpoint recovers: the next run keeps them; then a finished build re-run generates nothing.
        for qid in ("q3", "q5", "q7", "q13"):
            server.script[qid] = "good"
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["failed"] == {} and report["rejected"] == EXPECTED_REJECTED
        kept = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
        assert kept == ["q0", "q3", "q4", "q5", "q7", "q12", "q13"]
        before, train_before = sum(server.requests.values()), (out / "train.jsonl").read_bytes()
        capsys.readouterr()
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        assert "generated now: 0" in capsys.readouterr().out
        assert sum(server.requests.values()) == before and (out / "train.jsonl").read_bytes() == train_before
        assert all(json.loads(line)["ok"] is not None for line in (out / "cache.jsonl").read_text().splitlines())
    finally:
        server.close()


def _cache_keys(path: Path) -> list[tuple[str, str]]:
    lines = path.read_bytes().split(b"\n") if path.exists() else []
    return [(e["id"], e["stage"]) for e in (json.loads(x) for x in lines if x.strip())]


def test_kill_9_mid_build_then_resume_loses_and_duplicates_nothing(tmp_path):
    script = {f"q{i}": "good" for i in range(10)}
    answers = {q: str(i) for i, q in enumerate(script)}
    server = FailureServer(script, answers, delay=0.15)
    try:
        data = write_dataset(tmp_path, script, answers)
        out = tmp_path / "out"
        cfg = write_config(tmp_path, data, out, server.url)
        cfg_data = yaml.safe_load(cfg.read_text())
        for stage in cfg_data["stages"].values():
            stage["concurrency"] = 1
        cfg.write_text(yaml.safe_dump(cfg_data))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen([sys.executable, "-m", "mmrl.cli", "build-data", "cold-start", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(_cache_keys(out / "cache.jsonl")) < 7:
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended before the kill"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done_before = set(_cache_keys(out / "cache.jsonl"))
        assert 7 <= len(done_before) < 30 and not (out / "train.jsonl").exists()
        requests_before = Counter(server.requests)
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        keys = _cache_keys(out / "cache.jsonl")
        assert len(keys) == len(set(keys)) == 30  # every (item, stage) exactly once
        for key in done_before:  # finished stages were not asked again
            assert server.requests[key] == requests_before[key]
        kept = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
        assert kept == list(script)
    finally:
        server.close()


def test_api_key_comes_from_the_environment_and_is_never_written(tmp_path, monkeypatch, capsys):
    script, answers = {"q0": "good"}, {"q0": "3"}
    server = FailureServer(script, answers)
    try:
        data = write_dataset(tmp_path, script, answers)
        out = tmp_path / "out"
        cfg = write_config(tmp_path, data, out, server.url, api_key_env="COLD_TEST_KEY")
        monkeypatch.delenv("COLD_TEST_KEY", raising=False)
        assert main(["build-data", "cold-start", str(cfg)]) == 2
        assert "COLD_TEST_KEY" in capsys.readouterr().err
        monkeypatch.setenv("COLD_TEST_KEY", "sk-secret-123456")
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        printed = capsys.readouterr()
        for path in out.iterdir():
            if path.suffix in (".jsonl", ".json"):
                assert "sk-secret-123456" not in path.read_text()
        assert "sk-secret-123456" not in printed.out + printed.err
    finally:
        server.close()
