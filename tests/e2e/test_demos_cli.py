"""`mmrl demo rewards` as a user runs it: a real process serving on 127.0.0.1, answering HTTP, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mmrl_demo_serves_on_localhost_and_stops_on_ctrl_c():
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # -X faulthandler: if Ctrl-C does not stop it, SIGABRT makes it print where every thread is stuck.
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "mmrl", "demo", "rewards", "--port", str(port)],
                            cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # printed once the server is up
        assert line.startswith(f"mmrl demo rewards: http://127.0.0.1:{port}/ (this machine only"), line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"gradio" in page.read().lower()
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 120  # liveness only: a loaded 2-core machine can be slow to wind down
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)
            proc.wait(30)
            raise AssertionError("the demo did not stop on Ctrl-C; its threads:\n" + proc.stdout.read()[-6000:])
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def test_model_demos_talk_to_an_openai_compatible_server(tmp_path):
    """`--model http://HOST/v1`: chat and GUI handlers through a real `mmrl serve` of the tiny model."""
    pytest.importorskip("gradio")
    pytest.importorskip("openai")
    from PIL import Image

    from demos._model import DemoModel, Sampling
    from demos.chat import chat_stream
    from demos.gui import act

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "mmrl", "serve", "--model", "tiny", "--port", str(port),
                             "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", proc)
        model = DemoModel.load(f"http://127.0.0.1:{port}/v1")
        image = tmp_path / "screen.png"
        Image.new("RGB", (120, 200), "white").save(image)
        outputs = list(chat_stream(model, str(image), "What is on the screen?", Sampling(max_new_tokens=8), "1",
                                   "count"))  # fmt: skip
        assert outputs[-1][0].startswith("done") and outputs[-1][4]
        assert [r[0] for r in outputs[-1][3]] == ["format", "accuracy"]
        note, drawn, action_json, reply = act(model, str(image), "open settings", "[10, 10, 50, 50]",
                                              Sampling(max_new_tokens=8))  # fmt: skip
        assert drawn.size == (360, 600) and "gui_action" in note and isinstance(reply, str)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
