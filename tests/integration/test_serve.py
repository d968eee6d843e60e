"""`mmrl serve` for real: a uvicorn server on 127.0.0.1 over the tiny model, driven by the `openai` client and by
mmrl's own HTTP backend (image chat, streaming == non-streaming at temperature 0, 20 concurrent requests, 400s and
429s that leave the server serving)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from PIL import Image

# The `serve` extra: where it is missing (the GPU machine's image has none of the three) the module is skipped, so
# `pytest -m gpu tests/` still collects (an ImportError here aborted the whole collection).
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from mmrl.config import load_config  # noqa: E402
from mmrl.generation import Prompt, SamplingParams, load_backend  # noqa: E402
from mmrl.generation.backends import make_backend  # noqa: E402
from mmrl.generation.openai_format import image_to_data_url  # noqa: E402
from mmrl.generation.server import create_app  # noqa: E402
from mmrl.models.loading import load_policy  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hf_backend():
    torch.set_num_threads(1)
    loaded = load_policy(load_config(None).model, for_training=False)
    return make_backend(loaded.model, loaded.processor)


@pytest.fixture(scope="module")
def server(hf_backend, image):
    app = create_app(hf_backend, "tiny", max_queue=32, image_dirs=[image.parent])  # local files only from there
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", app
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "square.png"
    Image.new("RGB", (64, 48), "orange").save(path)
    return path


def chat(client, content, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def test_models_and_image_chat_match_the_backend(client, hf_backend, image):
    assert [m.id for m in client.models.list()] == ["tiny"]
    content = [{"type": "image_url", "image_url": {"url": image_to_data_url(image)}},
               {"type": "text", "text": "What colour is it?"}]
    reply = chat(client, content, temperature=0, max_tokens=8)
    direct = hf_backend.generate([Prompt.from_question("What colour is it?", images=[Image.open(image)])],
                                 SamplingParams(temperature=0, max_new_tokens=8))[0][0]
    assert reply.choices[0].message.content == direct.text
    assert reply.choices[0].finish_reason == direct.finish_reason == "length"
    assert reply.usage.completion_tokens == 8 and reply.usage.prompt_tokens > 8  # the image's tokens are counted
    by_path = chat(client, [{"type": "image_url", "image_url": {"url": str(image)}},
                            {"type": "text", "text": "What colour is it?"}], temperature=0, max_tokens=8)
    assert by_path.choices[0].message.content == direct.text  # a local file is the same image


def test_stream_equals_non_stream_at_temperature_zero(client):
    content = "Describe a square."
    whole = chat(client, content, temperature=0, max_tokens=12).choices[0]
    chunks = list(chat(client, content, temperature=0, max_tokens=12, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_n_seed_stop_and_logprobs(client):
    first = chat(client, "Count.", n=3, temperature=1.0, seed=11, max_tokens=6, logprobs=True)
    again = chat(client, "Count.", n=3, temperature=1.0, seed=11, max_tokens=6)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices] and len(set(texts)) > 1
    assert all(len(c.logprobs.content) == 6 and all(t.logprob <= 0 for t in c.logprobs.content)
               for c in first.choices)
    free = chat(client, "Count.", temperature=0, max_tokens=10).choices[0].message.content
    stop = free.strip()[-3:]
    cut = chat(client, "Count.", temperature=0, max_tokens=10, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.message.content and free.startswith(cut.message.content)


def test_twenty_concurrent_requests(client):
    expected = chat(client, "Hello?", temperature=0, max_tokens=4).choices[0].message.content
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(lambda _: chat(client, "Hello?", temperature=0, max_tokens=4), range(20)))
    assert [r.choices[0].message.content for r in replies] == [expected] * 20


def test_bad_requests_get_400_and_the_server_keeps_serving(client, server, tmp_path):
    base, app = server
    raw = httpx.post(f"{base}/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    missing = httpx.post(f"{base}/chat/completions", json={"model": "tiny"})
    assert missing.status_code == 400 and "messages" in missing.json()["error"]["message"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    bad_images = [
        "data:image/png;base64,iVBORw0KGgo=",  # a PNG signature and nothing else
        "data:image/png;base64,@@@",  # not base64
        str(broken),  # a local file that is not an image
        str(tmp_path / "missing.png"),
        "https://example.com/x.png",  # never fetched
    ]
    for url in bad_images:
        with pytest.raises(openai.BadRequestError) as err:
            chat(client, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}])
        assert err.value.status_code == 400, url
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, "hi", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="seed"):  # was a 400 naming no field ("Overflow ...")
        chat(client, "hi", seed=2**100, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="stop_token_ids"):  # was accepted and silently never matched
        chat(client, "hi", max_tokens=2, extra_body={"stop_token_ids": [-1]})
    with pytest.raises(openai.BadRequestError, match="unsupported part type 'audio'"):
        chat(client, [{"type": "audio", "audio": "x"}])
    # A full queue answers 429 (the openai client would retry it; this one does not).
    app.state.queue.active = app.state.queue.limit
    try:
        with pytest.raises(openai.RateLimitError):
            chat(client, "hi", max_tokens=2)
    finally:
        app.state.queue.active = 0
    assert chat(client, "still there?", max_tokens=3).choices[0].message.content is not None


def test_http_backend_against_the_server(server, hf_backend, image):
    backend = load_backend(server[0], concurrency=4)
    assert backend.model == "tiny" and "not-needed" not in repr(backend)
    prompts = [Prompt.from_question("What is it?", images=[image]), Prompt.from_question("And this?")]
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    remote = backend.generate(prompts, greedy)
    local = hf_backend.generate(prompts, greedy)
    assert [[c.text for c in g] for g in remote] == [[c.text for c in g] for g in local]
    assert [c.finish_reason for g in remote for c in g] == ["length", "length"]
    assert "".join(backend.stream(prompts[1], greedy)) == local[1][0].text
    sampled = backend.generate(prompts[1:], SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=3,
                                                           logprobs=True))
    assert len(sampled[0]) == 2 and all(len(c.logprobs) == 5 for c in sampled[0])
    with pytest.raises(Exception, match="MMRL_TEST_NO_SUCH_KEY"):
        load_backend(server[0], api_key_env="MMRL_TEST_NO_SUCH_KEY")


def test_http_backend_retries_a_busy_server(server):
    base, app = server
    backend = load_backend(base, max_retries=5)
    queue = app.state.queue
    refused_before = queue.refused
    queue.active = queue.limit  # every request is refused (429) until the queue frees up
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=backend.generate([Prompt.from_question("hi")], SamplingParams(temperature=0, max_new_tokens=2))))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while queue.refused == refused_before:
            assert worker.is_alive() and time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.02)
    finally:
        queue.active = 0
    worker.join(timeout=120)
    assert queue.refused > refused_before and result["out"][0][0].finish_reason == "length"  # refused, retried, answered


def test_mmrl_serve_command(tiny_model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "mmrl.cli", "serve", "--model", str(tiny_model_dir),
                             "--port", str(port), "--served-name", "tiny-cli"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mmrl serve did not come up"
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == ["tiny-cli"]
        reply = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x").chat.completions.create(
            model="tiny-cli", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
        assert reply.choices[0].finish_reason == "length"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_readme_serve_example_runs_against_the_server(server, capsys):
    import ast

    from tests.doc_blocks import block

    code = block("docs/serving.md", "Serving a model: `mmrl serve`", "python")
    assert 'url = "http://127.0.0.1:8000/v1"' in code
    code = code.replace("http://127.0.0.1:8000/v1", server[0])
    exec(compile(code, "docs/serving.md", "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2  # one reply, then the 4 sampled texts
    texts = ast.literal_eval(lines[1])
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)


def test_mmrl_serve_refuses_a_busy_port_before_loading(capsys):
    from mmrl.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "tiny", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_a_client_cannot_make_the_server_open_files_or_hold_it(client, server, tmp_path):
    """Local image files are read only under --image-dir (the error does not say whether a file exists), a
    text/plain POST (what any web page can send to 127.0.0.1 without a preflight) is refused, and a request's
    new-token budget is bounded."""
    base, _app = server
    private = tmp_path / "private.png"
    Image.new("RGB", (8, 8), "red").save(private)
    messages = {}
    for url in (str(private), f"file://{private}", "/etc/passwd", "/etc/no-such-file", str(private.parent / "../x.png")):
        with pytest.raises(openai.BadRequestError) as err:
            chat(client, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}])
        messages[url] = err.value.body["message"] if isinstance(err.value.body, dict) else str(err.value)
    assert all("local image files are refused" in m for m in messages.values()), messages
    assert messages["/etc/passwd"] == messages["/etc/no-such-file"]  # existence is not revealed
    plain = httpx.post(f"{base}/chat/completions", content=b'{"messages": [{"role": "user", "content": "hi"}]}',
                       headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    huge = httpx.post(f"{base}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 10**9})
    assert huge.status_code == 400 and "max_tokens" in huge.json()["error"]["message"]
    for field, value in (("n", True), ("max_tokens", False), ("temperature", True), ("stop_token_ids", [5, True])):
        flagged = httpx.post(f"{base}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                               field: value})
        message = flagged.json()["error"]["message"]
        assert flagged.status_code == 400 and message.startswith(field) and "not true/false" in message, message


def test_mmrl_serve_refuses_a_missing_image_dir_before_loading(tmp_path, capsys):
    from mmrl.cli import main

    with socket.socket() as taken:  # without the check, the busy port would be the error (no model load, no hang)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "tiny", "--port", str(port), "--image-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--image-dir {tmp_path / 'nope'}: no such directory; give an existing one"), err
    assert "\n" not in err and "Traceback" not in err
