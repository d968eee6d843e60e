"""An endpoint that refuses every request with a 4xx (here: n above its limit, as `mmrl serve` answers a K > 64) is
a setting to fix, not a verdict on each item: the builder exits 1 naming the endpoint and the status, caches nothing,
and the same command retries once the setting or the server is fixed. A real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmrl.cli import main


class RefusingServer:
    """Lists one model, answers every chat request 400 with an OpenAI-style error; counts the requests."""

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                owner.requests += 1
                self._send(400, {"error": {"message": "n: Input should be less than or equal to 64",
                                           "type": "invalid_request_error", "param": None, "code": 400}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = RefusingServer()
    yield s
    s.close()


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"{i}+0?", "answer": str(i)}) + "\n"
                            for i in range(3)), encoding="utf-8")
    return path


@pytest.mark.parametrize("builder", ["rejection", "cold-start"])
def test_a_4xx_for_every_request_is_a_failure_not_a_cached_rejection(tmp_path, capsys, server, builder):
    out = tmp_path / "out"
    if builder == "rejection":
        argv = ["build-data", "rejection", "--model", server.url, "--data", str(_data(tmp_path)), "--k", "100",
                "--max-retries", "0", "--attempts", "1", "--out", str(out)]
    else:
        stage = {"model": server.url, "max_retries": 0, "attempts": 1}
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(json.dumps({"data": str(_data(tmp_path)), "out": str(out),
                                   "stages": {"describe": stage, "reason": stage}}))
        argv = ["build-data", "cold-start", str(cfg)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "for any of the 3 items tried" in err and "http_400=3" in err and server.url in err
    assert (out / "cache.jsonl").read_text() == ""  # nothing final: the next run asks again
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 0 and report["rejected"] == {} and sum(report["failed"].values()) == 3
    asked = server.requests
    assert main(argv) == 1 and server.requests == asked + 3  # retried, not read back from the cache
