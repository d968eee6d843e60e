"""The five Gradio demos in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright's Python API).

Each demo is served in-process on a free 127.0.0.1 port with the demos' own safe launch settings; the browser loads the
page, uploads a bad file (a non-image, a truncated PNG, a 100-megapixel header, a broken metrics.jsonl) and reads the
one-line message in the page, then uploads a good one and gets an answer or a drawing. The model demos serve the
quickstart's own checkpoint (`quickstart_checkpoint`: configs/quickstart.yaml's data and sft steps, trained once per
session), and the chat must answer the quickstart's colour question right on a held-out shape. Screenshots go to the
test's temporary directory (and to $MMRL_DEMO_SCREENSHOTS when set: that is how docs/demo-*.png are made).

Without a browser the tests skip, except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.unit.demo_assets import colour_square, huge_png, quickstart_question

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("MMRL_CHROMIUM", "/usr/bin/chromium")  # Debian's package; another path on other systems
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
TIMEOUT_MS = 60_000
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true: the browser tests must run, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium for the module (skips, or fails under CI=true, when it cannot start)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    try:
        import gradio  # noqa: F401
    except ImportError:
        _unavailable("gradio is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    manager = sync_playwright().start()
    try:
        chromium = manager.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    except Exception as err:  # noqa: BLE001  (any launch failure means: no browser here)
        manager.stop()
        _unavailable(f"Chromium did not start: {str(err).splitlines()[0]}")
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)  # a loaded CI machine answers slower than Playwright's default 5 s
    yield chromium
    chromium.close()
    manager.stop()


@pytest.fixture(scope="module")
def quickstart_model(quickstart_checkpoint):
    from demos._model import DemoModel

    return DemoModel.load(str(quickstart_checkpoint), device="cpu")


READABLE_PX = 300  # an image shown this tall or more can be looked at; the 56-px ones were drawn 56 px tall


def shown_height(page, selector: str) -> float:
    """The height the browser draws an image at, in CSS pixels, once it is visible."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_be_visible()
    return page.locator(selector).bounding_box()["height"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def open_demo(browser, tmp_path):
    """open_demo(app, name) -> a Playwright page on the served app; the app and page are closed after the test."""
    from demos._common import launch

    opened = []

    def open_(app, name: str):
        port = _free_port()
        launch(app, port=port, prevent_thread_lock=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        opened.append((app, page, name))
        page.goto(f"http://127.0.0.1:{port}/")
        return page

    yield open_
    for app, page, name in opened:
        shot = tmp_path / f"demo-{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        target = os.environ.get("MMRL_DEMO_SCREENSHOTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(target) / shot.name)
        page.close()
        app.close()


# ---------------------------------------------------------------- files to upload
def good_image(path: Path, size=(160, 120)) -> Path:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([20, 30, 80, 90], fill="red")
    image.save(path)
    return path


def truncated_png(path: Path) -> Path:
    good_image(path.with_name("whole.png"), (300, 300))
    data = path.with_name("whole.png").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def not_an_image(path: Path) -> Path:
    path.write_text("this is a text file with an image's name\n")
    return path


def upload(page, elem_id: str, path: Path) -> None:
    """Set the file of a Gradio File component and wait until Gradio lists it (the upload finished)."""
    from playwright.sync_api import expect

    component = page.locator(f"#{elem_id}")
    clear = component.get_by_role("button", name="Clear")
    if clear.count():  # a file is already there: Gradio shows the upload input again once it is cleared
        clear.click()
    page.set_input_files(f"#{elem_id} input[type=file]", str(path))
    expect(page.locator(f"#{elem_id} a[href$='/{path.name}']")).to_be_attached()


def status_of(page, elem_id: str, contains: str) -> str:
    from playwright.sync_api import expect

    expect(page.locator(f"#{elem_id}")).to_contain_text(contains)
    return page.inner_text(f"#{elem_id}")


# ---------------------------------------------------------------- demos
def test_rewards_demo_scores_and_rejects_a_non_image(open_demo, tmp_path):
    from playwright.sync_api import expect

    from demos.rewards import build_app

    page = open_demo(build_app(), "rewards")
    page.fill("#rewards-completion textarea", "<think>the box is top left</think><answer>[20, 30, 80, 90]</answer>")
    page.fill("#rewards-gold textarea", "[20, 30, 80, 90]")
    page.locator("#rewards-task input").fill("grounding")
    page.keyboard.press("Enter")
    upload(page, "rewards-image", not_an_image(tmp_path / "notes.png"))
    page.click("#rewards-score")
    assert "not a readable image" in status_of(page, "rewards-status", "notes.png")
    assert "Traceback" not in page.content()
    upload(page, "rewards-image", good_image(tmp_path / "scene.png"))
    page.click("#rewards-score")
    expect(page.locator("#rewards-table")).to_contain_text("iou_threshold")
    table = page.inner_text("#rewards-table")
    assert "multi_box_iou" in table and "format" in table
    expect(page.locator("#rewards-parse")).to_contain_text("<answer> tags")
    expect(page.locator("#rewards-drawn img")).to_be_visible()


def test_chat_demo_answers_the_quickstart_colour_question_and_rejects_a_non_image(open_demo, quickstart_model,
                                                                                   tmp_path):
    from playwright.sync_api import expect

    from demos.chat import build_app

    page = open_demo(build_app(quickstart_model), "chat")
    # The run's own prompt template (the quickstart trains without a system prompt), shown and editable; the demo
    # once sent R1's system prompt to every checkpoint, not shown.
    expect(page.locator("#chat-system textarea")).to_have_value("")
    expect(page.locator("#chat-template-origin")).to_contain_text("config.yaml")
    upload(page, "chat-image", not_an_image(tmp_path / "photo.jpg"))
    assert "not a readable image" in status_of(page, "chat-status", "photo.jpg")  # said on upload, before asking
    # A held-out yellow shape: after its 24 SFT steps the checkpoint is right on ~3 of 4 held-out shapes, and on every
    # yellow one it was probed with (red and green are the colours it still mixes up; GRPO fixes them in the pipeline).
    image, question = quickstart_question(tmp_path / "held-out", "yellow")
    upload(page, "chat-image", image)
    # The 56-px upload is previewed at a size a person can look at.
    assert shown_height(page, "#chat-preview img") >= READABLE_PX
    page.fill("#chat-question textarea", question)
    page.fill("#chat-gold textarea", "yellow")  # the task is left on auto: 'yellow' is a text answer
    page.click("#chat-ask")
    assert "task text (inferred from the gold)" in status_of(page, "chat-status", "done")
    expect(page.locator("#chat-answer textarea")).to_have_value("yellow")
    rewards = page.inner_text("#chat-rewards")
    assert re.search(r"accuracy\s+1(\.0)?\s", rewards + "\n") and "unscorable" not in rewards, rewards
    expect(page.locator("#chat-thinking-panel")).to_be_visible()


def test_grounding_demo_draws_boxes_and_rejects_a_truncated_image(open_demo, quickstart_model, tmp_path):
    from demos.grounding import build_app

    page = open_demo(build_app(quickstart_model), "grounding")
    upload(page, "grounding-image", truncated_png(tmp_path / "cut.png"))
    page.fill("#grounding-expression textarea", "the red square")
    page.click("#grounding-locate")
    assert "truncated" in status_of(page, "grounding-status", "cut.png")
    upload(page, "grounding-image", colour_square(tmp_path / "scene.png", "red", seed=3))
    assert shown_height(page, "#grounding-preview img") >= READABLE_PX
    page.fill("#grounding-gold textarea", "[4, 4, 52, 52]")
    page.click("#grounding-locate")
    assert "IoU" in status_of(page, "grounding-status", "iou reward")
    assert shown_height(page, "#grounding-drawn img") >= READABLE_PX  # was drawn 56 px tall


def test_gui_demo_draws_the_action_and_rejects_a_100_megapixel_image(open_demo, quickstart_model, tmp_path):
    from playwright.sync_api import expect

    from demos.gui import build_app

    page = open_demo(build_app(quickstart_model), "gui")
    upload(page, "gui-image", huge_png(tmp_path / "bomb.png"))
    page.fill("#gui-instruction textarea", "open the settings")
    page.click("#gui-act")
    assert "megapixels" in status_of(page, "gui-status", "bomb.png")
    upload(page, "gui-image", good_image(tmp_path / "screen.png", (60, 120)))
    assert shown_height(page, "#gui-preview img") >= READABLE_PX
    page.fill("#gui-gold textarea", "[20, 30, 50, 60]")
    page.click("#gui-act")
    assert "gui_action" in status_of(page, "gui-status", "gui_action")
    assert shown_height(page, "#gui-drawn img") >= READABLE_PX  # was drawn 120 px tall
    expect(page.locator("#gui-action")).to_be_visible()


def test_gui_demo_steps_through_a_multi_turn_episode(open_demo, quickstart_model):
    from playwright.sync_api import expect

    from demos.gui import build_app

    page = open_demo(build_app(quickstart_model), "gui")
    page.get_by_text("episode (multi-turn)").click()
    page.click("#gui-episode-step")  # before a start: one line, no traceback
    assert "start an episode first" in status_of(page, "gui-episode-status", "start")
    page.click("#gui-episode-start")
    assert "Goal: tap" in status_of(page, "gui-episode-goal", "Goal")
    expect(page.locator("#gui-episode-screen img")).to_be_visible()
    page.click("#gui-episode-step")
    assert "turn 1" in status_of(page, "gui-episode-status", "turn 1")


def make_run(root: Path) -> Path:
    """A run directory as the trainer writes it: two stages in metrics.jsonl, samples at two steps, one with an image."""
    run = root / "run"
    (run / "samples").mkdir(parents=True)
    rows = []
    for step in range(1, 9):
        stage = 0 if step <= 4 else 1
        rows.append({"step": step, "stage": stage, "stage_name": ["perception", "reasoning"][stage],
                     "reward/total": 0.1 * step, "reward/accuracy": 0.05 * step, "reward/format": 0.5,
                     "completion_length/mean": 30 + step, "kl": 0.01 * step, "entropy": 6.9 - 0.1 * step,
                     "loss/clip_frac_low": 0.0, "loss/clip_frac_high": 0.01 * step, "loss": 0.2})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    good_image(run / "q1.png")
    for step in (4, 8):
        samples = [{"id": "q1", "answer": "1", "completion": f"<think>step {step}</think><answer>1</answer>",
                    "reward": 1.0, "advantage": 0.5, "reward/accuracy": 1.0, "reward/format": 1.0,
                    "images": ["q1.png"]},
                   {"id": "q2", "answer": "3", "completion": "<answer>7</answer>", "reward": 0.0, "advantage": -0.5,
                    "reward/accuracy": 0.0, "reward/format": 0.0}]  # fmt: skip
        (run / "samples" / f"step-{step}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return run


def test_runs_demo_shows_curves_samples_and_rejects_a_broken_upload(open_demo, tmp_path):
    from playwright.sync_api import expect

    from demos.runs import build_app

    page = open_demo(build_app(make_run(tmp_path)), "runs")
    expect(page.locator("#runs-curves img").first).to_be_visible()
    assert page.locator("#runs-curves img").count() >= 5  # reward, accuracy, length, KL, loss, entropy, clip
    page.get_by_role("tab", name="samples").click()
    expect(page.locator("#runs-samples")).to_contain_text("q2")
    page.fill("#runs-index input", "0")
    page.click("#runs-open")
    expect(page.locator("#runs-completion textarea")).to_have_value("<think>step 8</think><answer>1</answer>")
    expect(page.locator("#runs-images img").first).to_be_visible()
    page.get_by_role("tab", name="compare").click()
    broken = tmp_path / "metrics.jsonl"
    broken.write_text('{"step": 1, "loss": 0.1}\nnot json\n{"step": 3}\n')
    upload(page, "runs-upload", broken)
    assert "not a JSON object" in status_of(page, "runs-status", "metrics.jsonl:2")
    # The server keeps serving after the bad upload: a good file is drawn and the message goes away.
    good = tmp_path / "other" / "metrics.jsonl"
    good.parent.mkdir()
    good.write_text("".join(json.dumps({"step": s, "reward/total": min(1.0, 0.15 * s), "kl": 0.02 * s}) + "\n"
                            for s in range(1, 9)))  # fmt: skip
    upload(page, "runs-upload", good)
    expect(page.locator("#runs-other img").first).to_be_visible()
    expect(page.locator("#runs-status")).not_to_contain_text("metrics.jsonl")
    # Overlaid on this run's curves (it drew the upload alone): KL and entropy, which only this run logs, are there.
    expect(page.locator("#runs-other")).to_contain_text("this run (solid) vs uploaded metrics.jsonl (dashed)")
    assert page.locator("#runs-other img").count() >= 5  # the page is left on the comparison for the screenshot
