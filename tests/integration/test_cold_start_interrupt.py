"""`mmrl build-data cold-start` interrupted (Ctrl-C / SIGTERM) while paid requests are in flight: a real build process
against the scripted server on 127.0.0.1 (cold_start_server.py), whose requests after the first three are held
until the test opens its gate, so the requests in flight at the signal are known and nothing depends on timing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from mmrl.cli import main
from tests.integration.cold_start_server import FailureServer, write_config, write_dataset

ANSWERED = 3  # the first 3 requests are answered at once; with 2 workers, 2 more are then held in flight


def _cache_keys(out: Path) -> list[tuple[str, str]]:
    return [(e["id"], e["stage"]) for e in map(json.loads, (out / "cache.jsonl").read_text().splitlines())]


class Build:
    """The build as a process, its stderr read on a thread (universal newlines: tqdm's \\r ends a line too)."""

    def __init__(self, cfg: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([sys.executable, "-m", "mmrl.cli", "build-data", "cold-start", str(cfg)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.said = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self.said:
                self.lines.append(line.rstrip("\n"))
                self.said.notify_all()

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        with self.said:
            assert self.said.wait_for(lambda: any(text in line for line in self.lines), timeout=timeout), self.lines
            return next(line for line in self.lines if text in line)


def _setup(tmp_path: Path) -> tuple[FailureServer, Path, Path, dict[str, str]]:
    script = {f"q{i}": "good" for i in range(6)}
    answers = {q: str(i) for i, q in enumerate(script)}
    server = FailureServer(script, answers, hold_after=ANSWERED)
    data = write_dataset(tmp_path, script, answers)
    out = tmp_path / "out"
    cfg = write_config(tmp_path, data, out, server.url)
    cfg_data = yaml.safe_load(cfg.read_text())
    for stage in cfg_data["stages"].values():  # 2 workers; a held request neither times out nor is retried
        stage.update({"concurrency": 2, "timeout": 120.0, "max_retries": 0, "attempts": 1})
    cfg.write_text(yaml.safe_dump(cfg_data))
    return server, cfg, out, script


SIGNALS = [(signal.SIGINT, 130, "interrupted", "press Ctrl-C again"),
           (signal.SIGTERM, 143, "terminated (SIGTERM)", "send SIGTERM again")]


@pytest.mark.parametrize("signum,code,how,again", SIGNALS, ids=["ctrl-c", "sigterm"])
def test_first_signal_starts_nothing_new_waits_for_the_requests_in_flight_and_caches_their_replies(
        tmp_path, signum, code, how, again):
    server, cfg, out, script = _setup(tmp_path)
    try:
        build = Build(cfg)
        assert server.wait_for_posts(ANSWERED + 2), build.lines  # 3 replies cached, 2 requests held in flight
        build.proc.send_signal(signum)
        said = build.wait_for_line("no new request starts")
        assert f"mmrl build-data cold-start: {how}: no new request starts; waiting for the 2 requests in flight (" in said
        assert "their replies will be cached" in said and again in said
        server.gate.set()  # the held replies arrive
        assert build.proc.wait(timeout=60) == code
        assert server.posts == ANSWERED + 2  # not one request after the signal
        keys = _cache_keys(out)
        assert len(keys) == len(set(keys)) == ANSWERED + 2  # every reply that arrived is cached, once
        assert not (out / "train.jsonl").exists()
        # the next run asks only for what is missing, and finishes the build
        assert main(["build-data", "cold-start", str(cfg)]) == 0
        assert all(server.requests[key] == 1 for key in keys)
        assert len(_cache_keys(out)) == 3 * len(script)
        assert [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()] == list(script)
    finally:
        server.close()


def test_second_signal_stops_at_once_keeping_the_replies_that_arrived(tmp_path):
    signum, code, how, _ = SIGNALS[0]
    server, cfg, out, _ = _setup(tmp_path)
    try:
        build = Build(cfg)
        assert server.wait_for_posts(ANSWERED + 2), build.lines
        build.proc.send_signal(signum)
        build.wait_for_line("no new request starts")
        build.proc.send_signal(signum)
        # the held requests never get their reply: the build must end without them
        assert build.proc.wait(timeout=60) == code
        build.wait_for_line(f"mmrl build-data: {how}")
        assert server.posts == ANSWERED + 2
        assert len(_cache_keys(out)) == ANSWERED  # the replies that arrived before the signals
    finally:
        server.close()
