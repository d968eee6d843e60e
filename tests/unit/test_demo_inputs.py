"""The demos' input handling without a browser: uploads (cut-short, fake, huge, one-pixel images), one status line
per failure, drawing with wild coordinates, and sampler settings."""

from __future__ import annotations

import pytest
from PIL import Image

from demos._common import DemoInputError, draw_marks, read_upload, shown_errors
from tests.unit.demo_assets import good_image, huge_png, noise_png

gr = pytest.importorskip("gradio")


def test_read_upload_accepts_an_image_and_explains_every_bad_one(tmp_path):
    assert read_upload(good_image(tmp_path / "ok.png")).size == (160, 120)
    rgba = tmp_path / "alpha.webp"
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(rgba)
    assert read_upload(rgba).mode == "RGB"
    (tmp_path / "text.png").write_text("hello")
    whole = good_image(tmp_path / "whole.png", (300, 300)).read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "notes.txt").write_text("hello")
    with open(tmp_path / "big.png", "wb") as handle:
        handle.truncate(25 * 2**20)  # sparse: 25 MB on paper
    cases = {
        None: "upload an image first",
        tmp_path / "text.png": "text.png: not a readable image",
        tmp_path / "cut.png": "cut.png: truncated or corrupt",
        huge_png(tmp_path / "bomb.png"): "bomb.png: too many pixels",
        tmp_path / "notes.txt": "notes.txt: not an image file",
        tmp_path / "big.png": "above the 20 MB upload limit",
    }
    for path, message in cases.items():
        with pytest.raises(DemoInputError) as caught:
            read_upload(path)
        assert message in str(caught.value)
        assert str(tmp_path) not in str(caught.value)  # the server's paths stay out of the page


def test_shown_errors_turns_failures_into_one_status_line(caplog):
    @shown_errors(3, 0)
    def bad_input(x):
        raise DemoInputError(f"gold: give <JSON> for {x}")

    @shown_errors(3, 0)
    def broken(x):
        raise KeyError("boom")

    @shown_errors(2, 1)
    def streams(x):
        yield "partial", ""
        raise ValueError("line one\nline two")

    status, *rest = bad_input("q")
    assert status == "⚠️ gold: give &lt;JSON&gt; for q"  # Markdown would swallow a raw <tag>
    assert all(isinstance(r, dict) or r is not None for r in rest)
    assert broken(1)[0] == "⚠️ error: KeyError: 'boom'"
    outputs = list(streams(1))
    assert outputs[0] == ("partial", "") and outputs[1][1] == "⚠️ error: ValueError: line one"
    assert "Traceback" in caplog.text  # logged in full on the server, not shown


def test_draw_marks_draws_in_image_pixels_and_clips_wild_coordinates():
    image = Image.new("RGB", (100, 80), "white")
    drawn = draw_marks(image, boxes=[([10, 10, 50, 40], "red", "")], points=[([1e9, -5], "lime", "")])
    assert drawn.size == (500, 400)  # shown 5x; the marks' coordinates are still the image's pixels
    assert drawn.getpixel((50, 125)) == (255, 0, 0) and drawn.getpixel((150, 125)) == (255, 255, 255)
    assert drawn.getpixel((499, 0)) == (0, 255, 0)  # a point far outside is drawn at the clipped corner
    assert image.getpixel((10, 25)) == (255, 255, 255)  # the upload itself is untouched


def test_a_png_cut_short_is_refused_unless_every_pixel_is_there(tmp_path):
    data, chunks = noise_png(tmp_path / "whole.png")
    whole = read_upload(tmp_path / "whole.png")
    # Only the IEND marker missing: every pixel row was decoded, so nothing is dropped or garbled.
    (tmp_path / "no-iend.png").write_bytes(data[: next(p for p, kind, _ in chunks if kind == b"IEND")])
    assert read_upload(tmp_path / "no-iend.png").tobytes() == whole.tobytes()
    # Cut before the last pixel-data chunk: rows are missing, and the page says so instead of showing half a picture.
    last_idat = [p for p, kind, _ in chunks if kind == b"IDAT"][-1]
    (tmp_path / "no-last-idat.png").write_bytes(data[:last_idat])
    with pytest.raises(DemoInputError, match="no-last-idat.png: truncated or corrupt"):
        read_upload(tmp_path / "no-last-idat.png")


def test_a_truncated_webp_and_a_one_pixel_image_get_a_message_for_the_uploader(tmp_path):
    Image.new("RGB", (120, 90), "red").save(tmp_path / "whole.webp")
    data = (tmp_path / "whole.webp").read_bytes()
    (tmp_path / "cut.webp").write_bytes(data[: len(data) // 2])  # Pillow fails while opening, with an OSError
    with pytest.raises(DemoInputError, match=r"^cut.webp: truncated or corrupt image data"):  # as a cut PNG says
        read_upload(tmp_path / "cut.webp")
    Image.new("RGB", (1, 1)).save(tmp_path / "pixel.png")
    with pytest.raises(DemoInputError) as caught:
        read_upload(tmp_path / "pixel.png")
    assert "pixel.png: image is 1x1 pixels" in str(caught.value) and "at least 2 pixels" in str(caught.value)
    assert "data." not in str(caught.value)  # no training-config key in a page for people who uploaded a picture


def test_a_seed_the_sampler_cannot_take_is_refused_before_the_model_runs():
    from demos._common import MAX_SEED, to_sampling

    assert to_sampling(0.7, 1.0, 0, 8, MAX_SEED).seed == MAX_SEED
    for seed in (1e30, float("nan"), -5, 2.5):  # 1e30 was "error: ValueError: Overflow when unpacking long long"
        with pytest.raises(DemoInputError, match="seed: give a whole number"):
            to_sampling(0.7, 1.0, 0, 8, seed)

