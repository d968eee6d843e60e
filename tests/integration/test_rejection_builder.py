"""`mmrl build-data rejection`: the selection rules against a scripted OpenAI-compatible server on 127.0.0.1
(hand-computed expectations), unique output ids, and the whole builder on the tiny model."""

from __future__ import annotations

import json
import threading
from collections import Counter
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


class Scripted:
    """The scripted policy server: `url`, `posts` (chat requests received), `fail_every_other` (a 503 for every
    second chat request to an item the script answers)."""

    def __init__(self) -> None:
        self.posts, self.answerable, self.fail_every_other, self.lock, self.url = 0, 0, False, threading.Lock(), ""


@pytest.fixture()
def scripted_server():
    state = Scripted()

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
            with state.lock:
                state.posts += 1
                # The alternation skips the item that always gets a 500, so it cannot hold another item's turn.
                if not isinstance(replies, int):
                    state.answerable += 1
                flaky = state.fail_every_other and not isinstance(replies, int) and state.answerable % 2 == 0
            if flaky:
                self._send(503, {"error": {"message": "scripted overload"}})
                return
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
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _data(tmp_path: Path, responses: bool = False) -> Path:
    """The items of REPLIES; with `responses`, each carries a previous SFT target (`PREV <id>`)."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": q, "prompt": f"[{q}] How many?", "answer": "3", "task": "count",
                                        **({"response": f"<think> PREV {q} </think><answer> 3 </answer>"}
                                           if responses else {})}) + "\n" for q in REPLIES))
    return path


@pytest.mark.parametrize(("rule", "expected"), [
    ("openvlthinker", {"q0": [B], "q1": [B], "q3": [A]}),
    ("all-correct", {"q0": [A, B, C], "q1": [B], "q3": [A]}),
])
def test_selection_rules_against_a_scripted_server(scripted_server, tmp_path, rule, expected):
    out = tmp_path / "out"
    argv = ["build-data", "rejection", "--model", scripted_server.url, "--data", str(_data(tmp_path)), "--k", "4",
            "--out", str(out), "--rule", rule, "--max-retries", "0", "--attempts", "1"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    got: dict[str, list[str]] = {}
    for record in records:
        got.setdefault(record["id"].split("#")[0], []).append(record["response"])
    assert got == expected
    report = json.loads((out / "report.json").read_text())
    # The 500 is a failure (no answer), not a rejection: reported apart and asked again by the next run.
    assert report["rejected"] == {"none_correct": 1} and report["failed"] == {"http_500": 1}
    assert report["kept"] + sum(report["rejected"].values()) + sum(report["failed"].values()) == report["input"] == 5
    assert all(record["meta"]["rejection"]["carried_over"] is False for record in records)
    # The re-run asks for q4 only; it fails again, and as it was every item tried, the command exits 1.
    posts = scripted_server.posts
    assert main(argv) == 1 and json.loads((out / "report.json").read_text())["generated_now"] == 1
    assert scripted_server.posts == posts + 1


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


def _argv(url: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["build-data", "rejection", "--model", url, "--data", str(data), "--k", "4", "--out", str(out),
            "--max-retries", "0", "--attempts", "1", *extra]


def test_keep_previous_rows_are_flagged_and_counted(scripted_server, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(scripted_server.url, _data(tmp_path, responses=True), out, "--keep-previous")) == 0
    records = {r["id"]: r for r in map(json.loads, (out / "train.jsonl").read_text().splitlines())}
    assert sorted(records) == ["q0", "q1", "q2", "q3"]
    carried = {q for q, r in records.items() if r["meta"]["rejection"]["carried_over"]}
    assert carried == {"q2"}  # never solved: its input target, marked as carried over
    assert records["q2"]["response"] == "<think> PREV q2 </think><answer> 3 </answer>"
    assert records["q0"]["response"] == B and records["q0"]["meta"]["rejection"]["carried_over"] is False
    report = json.loads((out / "report.json").read_text())
    assert report["kept_previous"] == 1 and report["kept"] == 4 and report["rejected"] == {}


def test_a_server_failing_every_other_request_loses_nothing_over_resumes(scripted_server, tmp_path):
    scripted_server.fail_every_other = True
    out = tmp_path / "out"
    argv = _argv(scripted_server.url, _data(tmp_path), out, "--concurrency", "2")
    codes = []
    for _ in range(20):
        codes.append(main(argv))
        report = json.loads((out / "report.json").read_text())
        # which items fail first depends on the order 2 workers send them: the rejected item may be answered late
        assert set(report["failed"]) <= {"http_503", "http_500"} and set(report["rejected"]) <= {"none_correct"}
        if report["failed"] == {"http_500": 1}:  # only the item the script always answers with a 500 is left
            break
    assert len(codes) >= 2 and report["failed"] == {"http_500": 1} and set(report["rejected"]) == {"none_correct"}
    records = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert records == ["q0", "q1", "q3"]
    cached = [json.loads(line)["id"] for line in (out / "cache.jsonl").read_text().splitlines()]
    assert sorted(cached) == ["q0", "q1", "q2", "q3"]  # each answered item once; failures never cached


def test_model_url_credentials_are_never_written_or_printed(scripted_server, tmp_path, capsys):
    host = scripted_server.url.removeprefix("http://")
    url = f"http://bob:pw-secret-7@{host}?api_key=sk-query-secret-8"
    out = tmp_path / "out"
    assert main(_argv(url, _data(tmp_path), out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == f"http://***@{host}?api_key=***" and report["kept"] == 3
    printed = capsys.readouterr()
    for text in [printed.out, printed.err, *(p.read_text() for p in out.iterdir() if p.suffix in (".json", ".jsonl"))]:
        assert "pw-secret-7" not in text and "sk-query-secret-8" not in text


def test_a_dead_endpoint_exits_1_with_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    url = f"http://bob:pw-secret-7@127.0.0.1:{port}/v1"
    assert main(_argv(url, _data(tmp_path), out, "--served-model", "policy")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"mmrl build-data: error: no answer from http://***@127.0.0.1:{port}/v1 for any of the 5 "
                          "items tried (connection=5)") and "--model" in err and "pw-secret-7" not in err
    assert json.loads((out / "report.json").read_text())["failed"] == {"connection": 5}


def test_changed_sampling_settings_regenerate_instead_of_reusing(scripted_server, tmp_path):
    out = tmp_path / "out"
    argv = _argv(scripted_server.url, _data(tmp_path), out)
    assert main(argv) == 0
    posts = scripted_server.posts
    assert main([*argv, "--temperature", "0.7"]) == 0  # another setting: every item is sampled again
    assert scripted_server.posts == posts + 5
    assert json.loads((out / "report.json").read_text())["generated_now"] == 5
    # The rule applies when writing: only the 500 is asked again (and fails again: every item tried failed -> 1).
    assert main([*argv, "--rule", "all-correct"]) == 1
    assert scripted_server.posts == posts + 6


def test_the_key_itself_in_api_key_env_is_never_echoed(scripted_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLICY_TEST_KEY", "sk-secret-123456")
    argv = _argv(scripted_server.url, _data(tmp_path), tmp_path / "out", "--api-key-env", "sk-secret-123456")
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert "POLICY_TEST_KEY" in printed.err and "sk-secret-123456" not in printed.out + printed.err
    assert len(printed.err.strip().splitlines()) == 1 and scripted_server.posts == 0


# ---------------------------------------------------------------- output ids
# `--rule all-correct` names an item's records `<id>#<k>`: input ids these could repeat (`x` next to `x#0`, or a
# repeated `x` the loader renamed `x#<line>`) are refused with one line before any request is sent.
def _id_data(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """(id, scripted item) rows: q0 has three correct completions, q1 one, q2 none."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"[{q}] How many?", "answer": "3", "task": "count"}) + "\n"
                            for i, q in rows))
    return path


def _id_argv(url: str, data: Path, out: Path, k: int, rule: str) -> list[str]:
    return ["build-data", "rejection", "--model", url, "--data", str(data), "--k", str(k), "--out", str(out),
            "--rule", rule, "--max-retries", "0", "--attempts", "1"]


def test_x_and_x_hash_0_are_refused_before_sampling(scripted_server, tmp_path, capsys):
    data = _id_data(tmp_path, [("x", "q0"), ("x#0", "q1")])
    assert main(_id_argv(scripted_server.url, data, tmp_path / "out", 4, "all-correct")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "data.jsonl:2" in err[0] and "'x#0'" in err[0] and "item 'x'" in err[0] and "distinct ids" in err[0]
    assert scripted_server.posts == 0 and not (tmp_path / "out" / "train.jsonl").exists()


def test_one_record_per_item_rules_keep_the_input_ids(scripted_server, tmp_path):
    out = tmp_path / "out"
    data = _id_data(tmp_path, [("x", "q0"), ("x#0", "q1")])
    assert main(_id_argv(scripted_server.url, data, out, 4, "openvlthinker")) == 0
    ids = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert ids == ["x", "x#0"]


def test_a_repeated_id_renamed_by_the_loader_is_refused_only_where_it_can_collide(scripted_server, tmp_path,
                                                                                 capsys):
    data = _id_data(tmp_path, [("x", "q0"), ("x", "q0")])  # the loader names the second one 'x#2'
    assert main(_id_argv(scripted_server.url, data, tmp_path / "near", 4, "all-correct")) == 2
    assert "'x#2'" in capsys.readouterr().err and scripted_server.posts == 0
    # Renamed 'x#5' (line 5) is out of reach of x#0..x#3: the build runs and every output id is distinct.
    far = tmp_path / "far"
    far.mkdir()
    data = _id_data(far, [("x", "q0"), ("y", "q2"), ("z", "q2"), ("w", "q2"), ("x", "q0")])
    out = tmp_path / "out"
    assert main(_id_argv(scripted_server.url, data, out, 4, "all-correct")) == 0
    ids = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert ids == ["x#0", "x#1", "x#2", "x#5#0", "x#5#1", "x#5#2"]
    assert max(Counter(ids).values()) == 1


def test_an_id_the_loader_renaming_would_repeat_gets_a_fresh_name(scripted_server, tmp_path, capsys):
    # The 'x' of line 3 would be renamed 'x#3', which line 2 already holds: the loader names it 'x#3-2' instead.
    data = _id_data(tmp_path, [("x", "q1"), ("x#3", "q1"), ("x", "q1")])
    out = tmp_path / "out"
    assert main(_id_argv(scripted_server.url, data, out, 4, "openvlthinker")) == 0
    ids = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert ids == ["x", "x#3", "x#3-2"]
    # all-correct still refuses the data's own 'x#3' (record 3 of item 'x'), naming its line.
    capsys.readouterr()
    assert main(_id_argv(scripted_server.url, data, tmp_path / "out2", 4, "all-correct")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'x#3'" in err[0] and "data.jsonl:2" in err[0] and "item 'x'" in err[0]
