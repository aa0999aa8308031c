"""Generate the sample product shots in examples/samples/ (our own work, CC0).

Run: .venv/bin/python scripts/make_samples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "examples" / "samples"
SIZE = (800, 600)


def backdrop(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    """A studio sweep: a soft vertical gradient."""
    t = np.linspace(0, 1, SIZE[1])[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, SIZE[0], axis=1).astype(np.uint8), "RGB")


def shaded(
    draw_shape, color: tuple[int, int, int], box: tuple[int, int, int, int]
) -> tuple[Image.Image, Image.Image]:
    """A shape filled with a left-to-right highlight, and its mask."""
    mask = Image.new("L", SIZE, 0)
    draw_shape(ImageDraw.Draw(mask), 255)
    x = np.linspace(-1, 1, SIZE[0])[None, :, None]
    light = 1.15 - 0.35 * np.abs(x + 0.35)
    fill = np.clip(np.array(color)[None, None, :] * light, 0, 255)
    layer = Image.fromarray(np.repeat(fill, SIZE[1], axis=0).astype(np.uint8), "RGB")
    return layer, mask.filter(ImageFilter.GaussianBlur(0.8))


def product(
    name: str, background: Image.Image, parts: list[tuple[object, tuple[int, int, int]]]
) -> None:
    image = background.copy()
    shadow = Image.new("L", SIZE, 0)
    ImageDraw.Draw(shadow).ellipse((250, 500, 560, 540), fill=90)
    image.paste((60, 60, 60), (0, 0), shadow.filter(ImageFilter.GaussianBlur(12)))
    for draw_shape, color in parts:
        layer, mask = shaded(draw_shape, color, (0, 0, 0, 0))
        image.paste(layer, (0, 0), mask)
    if name.endswith(".png"):
        image.save(OUT / name, "PNG", optimize=True)
    else:
        image.save(OUT / name, "JPEG", quality=90)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    grey = backdrop((238, 238, 238), (205, 205, 205))
    warm = backdrop((245, 236, 222), (214, 200, 180))
    blue = backdrop((226, 236, 246), (190, 206, 224))
    product(
        "mug.jpg",
        grey,
        [
            (lambda d, f: d.rounded_rectangle((300, 200, 480, 510), 30, fill=f), (200, 70, 40)),
            (lambda d, f: d.ellipse((440, 270, 540, 420), outline=f, width=26), (200, 70, 40)),
        ],
    )
    product(
        "bottle.jpg",
        warm,
        [
            (lambda d, f: d.rounded_rectangle((340, 190, 470, 520), 40, fill=f), (40, 110, 70)),
            (lambda d, f: d.rectangle((380, 100, 430, 200), fill=f), (40, 110, 70)),
            (lambda d, f: d.rectangle((372, 80, 438, 110), fill=f), (30, 30, 30)),
        ],
    )
    product(
        "ball.jpg",
        blue,
        [
            (lambda d, f: d.ellipse((290, 200, 520, 430), fill=f), (235, 170, 30)),
        ],
    )
    product(
        "box.png",
        grey,
        [
            (
                lambda d, f: d.polygon(
                    [(260, 260), (400, 200), (560, 260), (560, 480), (420, 540), (260, 480)], fill=f
                ),
                (120, 80, 170),
            ),
        ],
    )


if __name__ == "__main__":
    main()
