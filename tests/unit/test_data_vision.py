"""Bad images have their documented outcome; modes, EXIF and the Qwen2-VL smart_resize rules."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from mmrl.config.data import DataConfig
from mmrl.data.sample import Sample
from mmrl.data.vision import check_images, load_image, prepare_sample_images, resize_for_model, smart_resize
from mmrl.errors import DataError


def _png(path, size=(40, 30), color=(10, 200, 30), mode="RGB"):
    Image.new(mode, size, color).save(path)
    return str(path)


def _huge_header_png(path):
    """A valid-looking PNG whose IHDR claims 20000x20000 (a decompression bomb) with almost no data."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    import struct
    import zlib
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return str(path)


@pytest.fixture
def bad_images(tmp_path):
    good = _png(tmp_path / "good.png")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    return {
        "missing": (str(tmp_path / "missing.png"), "image file not found"),
        "zero": (str(tmp_path / "empty.png"), r"empty file \(0 bytes\)"),
        "truncated": (str(trunc), "truncated or corrupt"),
        "text_as_jpg": (str(tmp_path / "text.jpg"), "not a readable image"),
        "one_pixel": (_png(tmp_path / "one.png", size=(1, 1)), "1x1 pixels, smaller than data.min_image_side"),
        "huge_header": (_huge_header_png(tmp_path / "huge.png"), "huge image|20000x20000"),
        "good": (good, None),
    }


@pytest.mark.parametrize("kind", ["missing", "zero", "truncated", "text_as_jpg", "one_pixel", "huge_header"])
def test_bad_image_reason(bad_images, kind):
    path, reason = bad_images[kind]
    with pytest.raises(DataError, match=reason):
        load_image(path)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    image = load_image(str(tmp_path / "cmyk.jpg"))
    assert image.mode == "RGB" and image.size == (30, 20)
    r, g, b = image.getpixel((15, 10))
    assert r > 200 and g < 60 and b < 60  # pure red in CMYK


def test_exif_rotated_jpeg_is_upright(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(str(tmp_path / "rot.jpg")).size == (20, 40)


@pytest.mark.parametrize("mode,value", [("RGBA", (255, 0, 0, 0)), ("P", 3), ("L", 128), ("I;16", 40000)])
def test_modes_to_rgb(tmp_path, mode, value):
    path = tmp_path / f"m.{'png'}"
    Image.new(mode, (8, 8), value).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB"
    if mode == "RGBA":
        assert image.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white background


def test_smart_resize_rules():
    assert smart_resize(480, 640, min_pixels=28 * 28, max_pixels=10**7) == (476, 644)
    h, w = smart_resize(2000, 3000, min_pixels=28 * 28, max_pixels=448 * 448)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 448 * 448
    assert smart_resize(10, 10, min_pixels=56 * 56, max_pixels=448 * 448) == (56, 56)
    assert resize_for_model(Image.new("RGB", (100, 50)), 28 * 28, 56 * 56).size == (56, 28)


def _samples(bad_images, kinds):
    return [Sample(id=k, prompt="p", answer="a", images=[bad_images[k][0]]) for k in kinds]


def test_on_bad_image_error_names_sample(bad_images):
    samples = _samples(bad_images, ["good", "truncated"])
    with pytest.raises(DataError, match="sample truncated: .*truncated or corrupt.*on_bad_image=skip"):
        check_images(samples, DataConfig())


def test_on_bad_image_skip_writes_report_and_never_substitutes(bad_images, tmp_path):
    kinds = ["good", "missing", "zero", "truncated", "text_as_jpg", "one_pixel", "huge_header"]
    samples = _samples(bad_images, kinds)
    cfg = DataConfig(on_bad_image="skip", max_bad_fraction=0.9)
    good = check_images(samples, cfg, run_dir=tmp_path / "run")
    assert [s.id for s in good] == ["good"]
    report = [json.loads(line) for line in (tmp_path / "run" / "bad_images.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report] == kinds[1:]
    assert all(r["path"] and r["reason"] for r in report)


def test_on_bad_image_skip_aborts_above_fraction(bad_images, tmp_path):
    samples = _samples(bad_images, ["good", "missing"])
    with pytest.raises(DataError, match=r"1 of 2 samples have bad images .*max_bad_fraction=0.1"):
        check_images(samples, DataConfig(on_bad_image="skip", max_bad_fraction=0.1), run_dir=tmp_path)


def test_prepare_sets_sizes_and_keeps_order(tmp_path):
    a = _png(tmp_path / "a.png", size=(100, 50))
    b = _png(tmp_path / "b.png", size=(30, 30))
    sample = Sample(id="s", prompt="<image> vs <image>", answer="x", images=[a, b])
    images = prepare_sample_images(sample, DataConfig(min_pixels=28 * 28, max_pixels=56 * 56))
    assert [im.size for im in images] == [(56, 28), (28, 28)]
    assert sample.image_size == (100, 50) and sample.input_size == (56, 28)
