"""Synthetic product shots with known masks, and engine jobs for files, for the benchmarks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from daemon.models import EngineJob, Item, ItemStatus

SIDE = 1024


def product_shot(seed: int, side: int = SIDE) -> tuple[Image.Image, Image.Image]:
    """A shaded disc, card or triangle on a flat (even) or gradient (odd) backdrop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    top = rng.uniform(150, 240, 3)
    bottom = top - rng.uniform(20, 60, 3)
    t = (yy if seed % 2 else np.zeros_like(yy))[..., None]
    backdrop = top * (1 - t) + bottom * t + rng.normal(0, 2.0, (side, side, 3))
    image = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8))
    mask = Image.new("L", (side, side), 0)
    cx, cy = rng.uniform(0.4, 0.6, 2) * side
    r = rng.uniform(0.2, 0.32) * side
    draw = ImageDraw.Draw(mask)
    if seed % 3 == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif seed % 3 == 1:
        box = (cx - r, cy - 1.3 * r, cx + 0.8 * r, cy + 1.2 * r)
        draw.rounded_rectangle(box, radius=r * 0.2, fill=255)
    else:
        draw.polygon([(cx, cy - 1.3 * r), (cx + r, cy + r), (cx - r, cy + r)], fill=255)
    shade = (1.0 - 0.35 * xx)[..., None]
    colour = rng.uniform(0, 255, 3) * shade + rng.normal(0, 3.0, (side, side, 3))
    subject = Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8))
    image.paste(subject, mask=mask.filter(ImageFilter.GaussianBlur(1.5)))
    return image, mask


def job_for(path: Path) -> EngineJob:
    now = datetime.now(UTC)
    item = Item(
        1, path.name, path.name.lower(), "rev", "hash", 0, ItemStatus.PROCESSING, 0, None,
        None, "local", None, None, None, now, now, None, None, None,
    )  # fmt: skip
    return EngineJob(item, path.read_bytes, refuse, refuse)


def refuse(*_: object) -> Any:
    raise AssertionError("the local engine needs no link and submits nothing")
