"""`mmrl build-data cold-start` when the endpoint gives no answer, when the config changes between runs, and with
secrets around: real HTTP servers on 127.0.0.1 (the scripted `FailureServer` of cold_start_server.py)."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mmrl.cli import main
from tests.integration.cold_start_server import FailureServer, think_for, write_config, write_dataset


def _cache_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cache.jsonl").read_text().splitlines()]


def _kept(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]


def _fast(cfg: Path, **stage_fields: object) -> None:
    """No client retries and one attempt a stage: every 503 / dropped connection is a failure at once."""
    data = yaml.safe_load(cfg.read_text())
    for stage in data["stages"].values():
        stage.update({"max_retries": 0, "attempts": 1, **stage_fields})
    cfg.write_text(yaml.safe_dump(data))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_failing_every_other_request_loses_nothing_over_resumes(tmp_path, capsys):
    script = {f"q{i}": "good" for i in range(8)}
    answers = {q: str(i) for i, q in enumerate(script)}
    server = FailureServer(script, answers, fail_every_other=True)
    try:
        data = write_dataset(tmp_path, script, answers)
        out = tmp_path / "out"
        cfg = write_config(tmp_path, data, out, server.url)
        _fast(cfg, concurrency=2)
        failed_runs = 0
        for _ in range(30):  # each run answers at least every other request: a few runs in practice
            code = main(["build-data", "cold-start", str(cfg)])
            report = json.loads((out / "report.json").read_text())
            assert report["kept"] + sum(report["rejected"].values()) + sum(report["failed"].values()) == 8
            assert report["rejected"] == {}  # a 503 is never a rejection
            assert set(report["failed"]) <= {f"{s}:http_503" for s in ("pseudo_cot", "describe", "reason")}
            assert code == 0 or (code == 1 and "for any of the" in capsys.readouterr().err)
            # Only answered stages are cached, so the next run asks again for exactly the rest.
            assert all(line["ok"] for line in _cache_lines(out))
            failed_runs += bool(report["failed"])
            if not report["failed"]:
                break
        assert failed_runs >= 1 and not report["failed"]
        assert _kept(out) == list(script)
        keys = [(line["id"], line["stage"]) for line in _cache_lines(out)]
        assert len(keys) == len(set(keys)) == 24
        assert set(server.requests.values()) == {1}  # every stage answered exactly once, never asked again
    finally:
        server.close()


def test_a_server_that_dies_mid_build_then_comes_back(tmp_path, capsys):
    script = {f"q{i}": "good" for i in range(8)}
    answers = {q: str(i) for i, q in enumerate(script)}
    port = _free_port()
    server = FailureServer(script, answers, port=port, die_after=9)  # 3 items x 3 stages, then gone
    data = write_dataset(tmp_path, script, answers)
    out = tmp_path / "out"
    cfg = write_config(tmp_path, data, out, server.url)
    _fast(cfg, concurrency=1, served_model="scripted")  # one at a time: 3 items finish before the server dies
    try:
        assert main(["build-data", "cold-start", str(cfg)]) == 0  # some items finished: a warning, not an error
        report = json.loads((out / "report.json").read_text())
        assert report["kept"] == 3 and report["rejected"] == {}
        assert report["failed"] == {"pseudo_cot:connection": 5}
        assert "5 items got no answer" in capsys.readouterr().err
        assert _kept(out) == ["q0", "q1", "q2"]
        # Still dead: every item this run tried failed -> exit 1, one line naming the endpoint.
        assert main(["build-data", "cold-start", str(cfg)]) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"no answer from http://127.0.0.1:{port}/v1 for any of the 5 items tried (pseudo_cot:connection=5)" in last
    finally:
        server.close()
    revived = FailureServer(script, answers, port=port)
    try:
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        assert _kept(out) == list(script)
        assert {qid for qid, _ in revived.requests} == {f"q{i}" for i in range(3, 8)}  # finished ones not asked
        assert set(revived.requests.values()) == {1}
        keys = [(line["id"], line["stage"]) for line in _cache_lines(out)]
        assert len(keys) == len(set(keys)) == 24
    finally:
        revived.close()


def test_every_item_failing_exits_1_naming_the_endpoint_without_credentials(tmp_path, capsys):
    script, answers = {"q0": "good", "q1": "good"}, {"q0": "3", "q1": "4"}
    data = write_dataset(tmp_path, script, answers)
    out = tmp_path / "out"
    port = _free_port()  # nothing listens there
    url = f"http://bob:pw-secret-7@127.0.0.1:{port}/v1?api_key=sk-query-secret-8&api-version=1"
    cfg = write_config(tmp_path, data, out, url, served_model="scripted")
    _fast(cfg, served_model="scripted")
    assert main(["build-data", "cold-start", str(cfg)]) == 1
    printed = capsys.readouterr()
    last = printed.err.strip().splitlines()[-1]
    shown = f"http://***@127.0.0.1:{port}/v1?api_key=***&api-version=1"
    assert last.startswith(f"mmrl build-data: error: no answer from {shown} for any of the 2 items tried")
    assert "stages.pseudo_cot.model" in last and "re-run the same command" in last
    report = json.loads((out / "report.json").read_text())
    assert report["failed"] == {"pseudo_cot:connection": 2} and report["kept"] == 0
    assert set(report["models"].values()) == {shown}
    # Without served_model the client first lists the models: that error shows the URL redacted too.
    _fast(cfg, served_model=None)
    assert main(["build-data", "cold-start", str(cfg)]) == 2
    listed = capsys.readouterr()
    assert f"http://***@127.0.0.1:{port}/v1" in listed.err and len(listed.err.strip().splitlines()) == 1
    for text in [printed.out, printed.err, listed.out, listed.err,
                 *(p.read_text() for p in out.iterdir() if p.suffix in (".json", ".jsonl"))]:
        assert "pw-secret-7" not in text and "sk-query-secret-8" not in text


def test_a_changed_config_regenerates_what_it_changes_and_reuses_the_rest(tmp_path):
    script = {f"q{i}": "good" for i in range(3)}
    answers = {q: str(i + 1) for i, q in enumerate(script)}
    server = FailureServer(script, answers)
    try:
        data = write_dataset(tmp_path, script, answers)
        out = tmp_path / "out"
        cfg = write_config(tmp_path, data, out, server.url)
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        assert _kept(out) == list(script) and set(server.requests.values()) == {1}

        def asked(stage: str) -> int:
            return sum(n for (_, s), n in server.requests.items() if s == stage)

        # Another reasoner prompt (this one makes the scripted reasoner answer 99): only the reason stage re-runs.
        (tmp_path / "reason_alt.txt").write_text("# alt\nSTAGE3 ANSWER-99 {question} {description}\n")
        alt = [f"stages.reason.prompt={tmp_path / 'reason_alt.txt'}"]
        assert main(["build-data", "cold-start", str(cfg), *alt]) == 0
        assert (asked("pseudo_cot"), asked("describe"), asked("reason")) == (3, 3, 6)
        report = json.loads((out / "report.json").read_text())
        assert report["kept"] == 0 and report["rejected"] == {"wrong_answer": 3}
        # Other sampling for the describe stage: it re-runs, not stage 1; the scripted server describes as before, so
        # the reasoner's exact prompt is unchanged and its cached reply is reused (keys follow the exact inputs).
        assert main(["build-data", "cold-start", str(cfg), *alt, "stages.describe.temperature=0.5"]) == 0
        assert (asked("pseudo_cot"), asked("describe"), asked("reason")) == (3, 6, 6)
        # Another stage-1 setting: stage 1 re-runs; its scripted reply is the same text, so the describe prompt (at
        # the first temperature) and the reasoner prompt are too, and their cached replies are reused.
        assert main(["build-data", "cold-start", str(cfg), *alt, "stages.pseudo_cot.max_new_tokens=48"]) == 0
        assert (asked("pseudo_cot"), asked("describe"), asked("reason")) == (6, 6, 6)
        # Back to the first config: its cached results are found again; nothing is asked.
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        assert sum(server.requests.values()) == 18 and _kept(out) == list(script)
        record = json.loads((out / "train.jsonl").read_text().splitlines()[0])
        assert record["response"] == f"<think> {think_for('q0')} </think><answer> 1 </answer>"
        # The quality checks run when writing, on the cache: a stricter one needs no request at all.
        assert main(["build-data", "cold-start", str(cfg), "filter.min_think_words=100"]) == 0
        assert sum(server.requests.values()) == 18
        assert json.loads((out / "report.json").read_text())["rejected"] == {"length": 3}
    finally:
        server.close()


@pytest.mark.parametrize("case", ["value_in_config", "trailing_newline", "non_ascii"])
def test_api_key_errors_name_the_variable_never_its_value(tmp_path, monkeypatch, capsys, case):
    script, answers = {"q0": "good"}, {"q0": "3"}
    server = FailureServer(script, answers)
    secret = "sk-secret-123456"
    try:
        data = write_dataset(tmp_path, script, answers)
        out = tmp_path / "out"
        if case == "value_in_config":  # `api_key_env: $COLD_TEST_KEY`: the key itself where its name belongs
            monkeypatch.setenv("COLD_TEST_KEY", secret)
            cfg = write_config(tmp_path, data, out, server.url, api_key_env=secret)
        else:
            monkeypatch.setenv("COLD_TEST_KEY", secret + ("\n" if case == "trailing_newline" else "é"))
            cfg = write_config(tmp_path, data, out, server.url, api_key_env="COLD_TEST_KEY")
        assert main(["build-data", "cold-start", str(cfg)]) == 2
        printed = capsys.readouterr()
        err = printed.err.strip().splitlines()
        assert len(err) == 1 and "COLD_TEST_KEY" in err[0] and "stages.reason.api_key_env" in err[0]
        assert secret not in printed.out + printed.err
        assert Counter(server.requests) == Counter()  # refused before any request
    finally:
        server.close()


def test_every_item_failed_names_each_failing_stage_not_the_most_common_one(tmp_path, capsys):
    # failures spread over two stages: the describe endpoint answers 500, the reasoner 429 (no retries here)
    script = {"q0": "e500", "q1": "e500", "q2": "e429_once"}
    answers = {q: str(i) for i, q in enumerate(script)}
    server = FailureServer(script, answers)
    try:
        data = write_dataset(tmp_path, script, answers)
        cfg = write_config(tmp_path, data, tmp_path / "out", server.url)
        _fast(cfg)
        assert main(["build-data", "cold-start", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert "for any of the 3 items tried (describe:http_500=2, reason:http_429=1)" in err
        assert "stages.describe.model / stages.reason.model are right" in err
    finally:
        server.close()
