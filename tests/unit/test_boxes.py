"""Box frame conversions against hand-computed boxes, both directions, both Qwen conventions."""

from __future__ import annotations

import pytest

from mmrl.data.boxes import convert_box, convert_point

IMAGE = (640, 480)  # original (w, h)
INPUT = (644, 476)  # smart_resize(480, 640) with generous max_pixels: 23x17 patches of 28


@pytest.mark.parametrize("src,dst,box,expected", [
    # original pixels -> Qwen2-VL 0..1000: x/640*1000, y/480*1000
    ("pixel", "norm1000", [64, 48, 320, 240], [100.0, 100.0, 500.0, 500.0]),
    ("norm1000", "pixel", [100, 100, 500, 500], [64.0, 48.0, 320.0, 240.0]),
    # original pixels -> Qwen2.5-VL input pixels: x*644/640, y*476/480
    ("pixel", "input_pixel", [160, 120, 320, 240], [161.0, 119.0, 322.0, 238.0]),
    ("input_pixel", "pixel", [161, 119, 322, 238], [160.0, 120.0, 320.0, 240.0]),
    ("pixel", "norm1", [320, 240, 640, 480], [0.5, 0.5, 1.0, 1.0]),
    ("norm1", "norm1000", [0.25, 0.5, 0.75, 1.0], [250.0, 500.0, 750.0, 1000.0]),
    ("norm1000", "input_pixel", [500, 500, 1000, 1000], [322.0, 238.0, 644.0, 476.0]),
])
def test_frames(src, dst, box, expected):
    got = convert_box(box, src, dst, image_size=IMAGE, input_size=INPUT)
    assert got == pytest.approx(expected)
    back = convert_box(got, dst, src, image_size=IMAGE, input_size=INPUT)
    assert back == pytest.approx([float(v) for v in box])


def test_xywh_both_directions_with_frame_change():
    assert convert_box([64, 48, 256, 192], "pixel", "norm1000", image_size=IMAGE, src_format="xywh") == \
        pytest.approx([100.0, 100.0, 500.0, 500.0])
    assert convert_box([100, 100, 500, 500], "norm1000", "pixel", image_size=IMAGE, dst_format="xywh") == \
        pytest.approx([64.0, 48.0, 256.0, 192.0])


def test_point_and_missing_size_errors():
    assert convert_point([322, 238], "input_pixel", "norm1000", image_size=IMAGE, input_size=INPUT) == \
        pytest.approx([500.0, 500.0])
    with pytest.raises(ValueError, match="input_size"):
        convert_box([0, 0, 1, 1], "input_pixel", "pixel", image_size=IMAGE)


def test_input_size_from_resize_matches_frame():
    from PIL import Image

    from mmrl.data.sample import Sample
    from mmrl.data.vision import prepare_sample_images

    class Cfg:
        min_pixels, max_pixels = 28 * 28, 1000 * 1000

    sample = Sample(id="s", prompt="p", answer=[64, 48, 320, 240], task="grounding",
                    images=[Image.new("RGB", IMAGE)])
    prepare_sample_images(sample, Cfg())
    assert sample.image_size == IMAGE and sample.input_size == INPUT
