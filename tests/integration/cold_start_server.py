"""The scripted OpenAI-compatible `FailureServer` on 127.0.0.1 and the dataset/config writers that the cold-start
builder tests share (test_cold_start.py, test_cold_start_failures.py, test_cold_start_setup.py)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from PIL import Image

STAGE_MARK = {"STAGE1": "pseudo_cot", "STAGE2": "describe", "STAGE3": "reason"}


def think_for(qid: str) -> str:
    """A distinct, non-repetitive chain of thought per item (so items are no near-duplicates of each other)."""
    rng = random.Random(qid)
    return " ".join(f"w{rng.randrange(10**6)}" for _ in range(12))


class FailureServer:
    """An OpenAI-compatible server whose reply for (item, stage) follows `script[item]`; counts every request.

    Hostile switches: `fail_every_other` answers every second chat request with a 503; `die_after` = N: after N chat
    requests the server is gone (later requests get their connection dropped, the port refuses new ones);
    `hold_after` = N: chat requests after the first N wait for `gate` to be set before their reply (requests in
    flight, for the interrupt tests; `wait_for_posts` waits on the server's own count, no sleeping)."""

    def __init__(self, script: dict[str, str], answers: dict[str, str], delay: float = 0.0, port: int = 0,
                 fail_every_other: bool = False, die_after: int | None = None,
                 hold_after: int | None = None) -> None:
        self.script, self.answers, self.delay = script, answers, delay
        self.fail_every_other, self.die_after, self.hold_after = fail_every_other, die_after, hold_after
        self.gate = threading.Event()
        self.arrived = threading.Condition()
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
                    held = outer.hold_after is not None and outer.posts > outer.hold_after
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
                with outer.arrived:
                    outer.arrived.notify_all()
                if flaky:
                    self._send(503, {"error": {"message": "scripted overload", "type": "x"}})
                    return
                if held:
                    outer.gate.wait()
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

    def wait_for_posts(self, n: int, timeout: float = 60.0) -> bool:
        """Wait until `n` chat requests have arrived (True), or `timeout` seconds (False)."""
        with self.arrived:
            return self.arrived.wait_for(lambda: self.posts >= n, timeout=timeout)

    def _stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def close(self) -> None:
        self.gate.set()  # held requests end
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
