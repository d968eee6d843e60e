"""`mmrl build-data cold-start` against real HTTP servers on 127.0.0.1: a scripted failure server (malformed replies,
500s, 429s, slow replies, dropped connections, wrong answers) and `mmrl serve` with the tiny preset."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from mmrl.cli import main
from mmrl.data.dataset import load_samples

STAGE_MARK = {"STAGE1": "pseudo_cot", "STAGE2": "describe", "STAGE3": "reason"}


def think_for(qid: str) -> str:
    """A distinct, non-repetitive chain of thought per item (so items are no near-duplicates of each other)."""
    rng = random.Random(qid)
    return " ".join(f"w{rng.randrange(10**6)}" for _ in range(12))


class FailureServer:
    """An OpenAI-compatible server whose reply for (item, stage) follows `script[item]`; counts every request.

    Hostile switches: `fail_every_other` answers every second chat request with a 503; `die_after` = N: after N chat
    requests the server is gone (later requests get their connection dropped, the port refuses new ones)."""

    def __init__(self, script: dict[str, str], answers: dict[str, str], delay: float = 0.0, port: int = 0,
                 fail_every_other: bool = False, die_after: int | None = None) -> None:
        self.script, self.answers, self.delay = script, answers, delay
        self.fail_every_other, self.die_after = fail_every_other, die_after
        self.requests: Counter[tuple[str, str]] = Counter()
        self.posts = 0
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        self.dead = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
                stage = next(s for mark, s in STAGE_MARK.items() if mark in text)
                qid = text.split("[", 1)[1].split("]", 1)[0]
                with outer.lock:
                    outer.posts += 1
                    if outer.die_after is not None and outer.posts > outer.die_after:
                        self.close_connection = True  # dead: this request gets no answer, the port refuses more
                        if not outer.dead:
                            outer.dead = True
                            threading.Thread(target=outer._stop, daemon=True).start()
                        return
                    flaky = outer.fail_every_other and outer.posts % 2 == 0
                    if not flaky:
                        outer.requests[(qid, stage)] += 1
                        outer.prompts.append(text)
                    count = outer.requests[(qid, stage)]
                if flaky:
                    self._send(503, {"error": {"message": "scripted overload", "type": "x"}})
                    return
                time.sleep(outer.delay)
                reply = outer.reply(qid, stage, count, text)
                if reply == "drop":
                    self.close_connection = True
                    return
                if reply == "html":  # a proxy's error page with status 200
                    page = b"<html><body>502 Bad Gateway</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                if isinstance(reply, int):
                    self._send(reply, {"error": {"message": "scripted", "type": "x"}},
                               {"retry-after": "0"} if reply == 429 else None)
                    return
                content, finish = reply
                self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "scripted",
                                 "choices": [{"index": 0, "finish_reason": finish,
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": 5, "completion_tokens": len(content.split()),
                                           "total_tokens": 5 + len(content.split())}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, qid: str, stage: str, count: int, text: str = ""):
        mode, gold = self.script[qid], self.answers[qid]
        if stage == "reason" and "ANSWER-99" in text:  # a prompt that makes the reasoner answer wrongly
            mode = "wrong"
        good = f"<think> {think_for(qid)} </think><answer> {gold} </answer>"
        if stage == "pseudo_cot":
            if mode == "slow":
                time.sleep(3)
            if mode == "empty":
                return "", "stop"
            return f"I see the shapes of {qid}.", "stop"
        if stage == "describe":
            if mode == "e500":
                return 500
            if mode == "drop":
                return "drop"
            if mode == "garbage":
                return "html"
            return f"There are shapes in {qid}.", "stop"
        if mode == "e429_once" and count == 1:
            return 429
        return {
            "wrong": (f"<think> {think_for(qid)} </think><answer> 99 </answer>", "stop"),
            "malformed": (f"The answer is {gold}.", "stop"),
            "truncated": (f"<think> {think_for(qid)}", "length"),
            "dup": (f"<think> {think_for('q0')} </think><answer> {gold} </answer>", "stop"),
            "repeat": ("<think> " + "count the shapes " * 20 + f"</think><answer> {gold} </answer>", "stop"),
            "mixed": ("<think> 我们 数 一下 这些 形状 的 个数 然后 得到 答案 shapes </think>"
                      f"<answer> {gold} </answer>", "stop"),
        }.get(mode, (good, "stop"))

    def _stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def close(self) -> None:
        if not self.dead:
            self._stop()


def write_dataset(root: Path, script: dict[str, str], answers: dict[str, str]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for qid in script:
        Image.new("RGB", (16, 16), (int(qid[1:]) * 20 % 255, 0, 0)).save(root / "images" / f"{qid}.png")
        lines.append(json.dumps({"id": qid, "images": [f"images/{qid}.png"], "prompt": f"[{qid}] How many shapes?",
                                 "answer": answers[qid], "task": "count"}))
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(root: Path, data: Path, out: Path, url: str, **reason: object) -> Path:
    prompts = {}
    for mark, stage in STAGE_MARK.items():
        holders = {"pseudo_cot": "{question}", "describe": "{question} {pseudo_cot}",
                   "reason": "{question} {description}"}[stage]
        prompts[stage] = root / f"{stage}.txt"
        prompts[stage].write_text(f"# test prompt\n{mark} {holders}\n")
    common = {"model": url, "concurrency": 4, "max_retries": 1, "timeout": 1.0, "attempts": 2, "max_new_tokens": 64}
    cfg = {"data": str(data), "out": str(out), "stages": {
        "pseudo_cot": {**common, "prompt": str(prompts["pseudo_cot"])},
        "describe": {**common, "prompt": str(prompts["describe"])},
        "reason": {**common, "prompt": str(prompts["reason"]), **reason}}}
    path = root / "cold.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


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
