"""Procedurally drawn scenes with their own ground truth: shapes on a white canvas, or rendered numbers.

Shapes are drawn without anti-aliasing and never touch, so every object is one connected region of one exact colour
and its box is the extent of its pixels — which the tests check against the image itself.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 220),
    "green": (30, 160, 50),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "cyan": (20, 190, 200),
}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (255, 255, 255)


def colors_for(difficulty: int) -> list[str]:
    """4 colours at difficulty 1, 6 at 2, 8 at 3."""
    return list(COLORS)[: {1: 4, 2: 6}.get(difficulty, 8)]


@dataclass
class Shape:
    shape: str
    color: str
    box: list[int]  # [x1, y1, x2, y2], inclusive pixel extent in the image

    def to_json(self) -> dict:
        return asdict(self)


def _draw(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x1, y1, x2, y2 = shape.box
    fill = COLORS[shape.color]
    if shape.shape == "square":
        draw.rectangle([x1, y1, x2, y2], fill=fill)
    elif shape.shape == "circle":
        draw.ellipse([x1, y1, x2, y2], fill=fill)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)


def _tight_box(pixels: np.ndarray, color: str, region: list[int]) -> list[int]:
    """The actual pixel extent of `color` inside `region` (rasterization can shave a pixel off an ellipse)."""
    x1, y1, x2, y2 = region
    match = np.all(pixels[y1: y2 + 1, x1: x2 + 1] == COLORS[color], axis=-1)
    ys, xs = np.nonzero(match)
    return [x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()), y1 + int(ys.max())]


def shape_scene(rng: random.Random, size: int, n: int, colors: list[str], shapes: tuple[str, ...] = SHAPES,
                min_frac: float = 0.5, max_frac: float = 0.9, distinct_colors: bool = False,
                fixed: list[tuple[str, str]] | None = None) -> tuple[Image.Image, list[Shape]]:
    """Draw `n` non-touching shapes, one per cell of a grid; `fixed` gives (shape, color) pairs to use in order."""
    grid = max(1, math.ceil(math.sqrt(n)))
    cell = size // grid
    cells = rng.sample(range(grid * grid), n)
    palette = rng.sample(colors, n) if distinct_colors else None
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    objects = []
    for index, cell_index in enumerate(cells):
        row, col = divmod(cell_index, grid)
        side = max(6, int(cell * rng.uniform(min_frac, max_frac)))
        side = min(side, cell - 2)
        x1 = col * cell + 1 + rng.randint(0, cell - 2 - side)
        y1 = row * cell + 1 + rng.randint(0, cell - 2 - side)
        if fixed is not None:
            kind, color = fixed[index]
        else:
            kind = rng.choice(shapes)
            color = palette[index] if palette else rng.choice(colors)
        shape = Shape(kind, color, [x1, y1, x1 + side - 1, y1 + side - 1])
        _draw(draw, shape)
        objects.append(shape)
    pixels = np.asarray(image)
    for shape in objects:
        shape.box = _tight_box(pixels, shape.color, shape.box)
    return image, objects


def number_scene(rng: random.Random, size: int, numbers: list[int]) -> Image.Image:
    """Numbers rendered side by side (black on white), large enough for a small vision encoder."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    text = "  ".join(str(v) for v in numbers)
    font_size = max(8, int(size * 0.9 / max(2, len(text) * 0.6)))
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (size - (right - left)) // 2 - left + rng.randint(-2, 2)
    y = (size - (bottom - top)) // 2 - top + rng.randint(-2, 2)
    draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return image
