"""`mmrl build-data rejection`: the selection rules against a scripted OpenAI-compatible server on 127.0.0.1
(hand-computed expectations), and the whole builder on the tiny model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmrl.cli import main

# Word counts (str.split): A 6, B 8, C 10 — all correct; D wrong.
A = "<think> one two </think><answer> 3 </answer>"
B = "<think> one two three four </think><answer> 3 </answer>"
C = "<think> one two three four five six </think><answer> 3 </answer>"
D = "<think> x </think><answer> 4 </answer>"
REPLIES = {
    "q0": [(A, "stop"), (B, "stop"), (C, "stop"), (D, "stop")],  # several correct
    "q1": [(D, "stop"), (B, "stop"), (D, "stop"), (D, "stop")],  # exactly one correct
    "q2": [(D, "stop"), (D, "stop"), (D, "stop"), (D, "stop")],  # none correct
    "q3": [(C, "length"), (A, "stop"), (D, "stop"), (D, "stop")],  # a cut-off "correct" one does not count
    "q4": 500,
}


@pytest.fixture()
def scripted_server():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": "policy", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][-1]["content"]
            text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
            replies = REPLIES[text.split("[", 1)[1].split("]", 1)[0]]
            if isinstance(replies, int):
                self._send(replies, {"error": {"message": "scripted"}})
                return
            assert body["n"] == len(replies)
            self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "policy",
                             "choices": [{"index": i, "finish_reason": f, "message": {"role": "assistant",
                                                                                     "content": t}}
                                         for i, (t, f) in enumerate(replies)]})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": q, "prompt": f"[{q}] How many?", "answer": "3", "task": "count"}) + "\n"
                            for q in REPLIES))
    return path


@pytest.mark.parametrize(("rule", "expected"), [
    ("openvlthinker", {"q0": [B], "q1": [B], "q3": [A]}),
    ("all-correct", {"q0": [A, B, C], "q1": [B], "q3": [A]}),
])
def test_selection_rules_against_a_scripted_server(scripted_server, tmp_path, rule, expected):
    out = tmp_path / "out"
    argv = ["build-data", "rejection", "--model", scripted_server, "--data", str(_data(tmp_path)), "--k", "4",
            "--out", str(out), "--rule", rule, "--max-retries", "0", "--attempts", "1"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    got: dict[str, list[str]] = {}
    for record in records:
        got.setdefault(record["id"].split("#")[0], []).append(record["response"])
    assert got == expected
    report = json.loads((out / "report.json").read_text())
    assert report["rejected"] == {"http_500": 1, "none_correct": 1}
    assert report["kept"] + sum(report["rejected"].values()) == report["input"] == 5
    assert main(argv) == 0 and json.loads((out / "report.json").read_text())["generated_now"] == 0


def test_rejection_builder_on_the_tiny_model(tiny_model_dir, tmp_path):
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["count"], 2, 0, tmp_path / "d", forms=["open"], image_size=28)
    out = tmp_path / "rs"
    argv = ["build-data", "rejection", "--model", str(tiny_model_dir), "--data", str(data), "--k", "2",
            "--max-new-tokens", "8", "--out", str(out)]
    assert main(argv) == 0
    cache = [json.loads(line) for line in (out / "cache.jsonl").read_text().splitlines()]
    assert [len(e["texts"]) for e in cache] == [2, 2] and all(e["tokens"] > 0 for e in cache)
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] + sum(report["rejected"].values()) == 2
    assert main(argv) == 0 and json.loads((out / "report.json").read_text())["generated_now"] == 0
