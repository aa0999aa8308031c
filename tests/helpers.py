"""Shared test helpers: generated images with known masks, a ledger on a real file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from daemon.errors import PermanentItemError
from daemon.models import Cutout, EngineJob, EngineResult
from daemon.rendering import decoded


def shape_image(
    size: tuple[int, int] = (256, 192),
    *,
    shape: str = "ellipse",
    color: tuple[int, int, int] = (220, 60, 30),
    background: tuple[int, int, int] = (235, 235, 235),
    box: tuple[float, float, float, float] = (0.25, 0.2, 0.75, 0.8),
) -> tuple[Image.Image, np.ndarray]:
    """A coloured shape on a flat background, and its exact boolean mask."""
    width, height = size
    image = Image.new("RGB", size, background)
    mask = Image.new("L", size, 0)
    xy = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    for target, fill in ((ImageDraw.Draw(image), color), (ImageDraw.Draw(mask), 255)):
        getattr(target, "ellipse" if shape == "ellipse" else "rectangle")(xy, fill=fill)
    return image, np.asarray(mask) > 127


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def write_shape(path: Path, **kwargs: object) -> np.ndarray:
    image, mask = shape_image(**kwargs)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "JPEG")
    path.write_bytes(encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    return mask


def alpha_iou(png: bytes, mask: np.ndarray) -> float:
    alpha = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[:, :, 3] > 127
    union = np.logical_or(alpha, mask).sum()
    return float(np.logical_and(alpha, mask).sum() / union) if union else 1.0


def cutout_iou(result: EngineResult, mask: np.ndarray) -> float:
    """Intersection over union of an engine's cutout alpha and a known mask."""
    alpha = np.asarray(decoded(result).alpha) > 127
    union = np.logical_or(alpha, mask).sum()
    return float(np.logical_and(alpha, mask).sum() / union) if union else 1.0


class ChromaKeyEngine:
    """A fast engine for pipeline tests: keys out the colour of the top-left pixel.

    Real-model tests live in tests/integration/test_local_engine.py and tests/e2e.
    """

    name = "local"

    def __init__(self) -> None:
        self.calls = 0
        self.fail_with: list[Exception] = []

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def cut_out(self, job: EngineJob) -> Cutout:
        self.calls += 1
        data = job.read_bytes()
        if self.fail_with:
            raise self.fail_with.pop(0)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, SyntaxError) as exc:
            raise PermanentItemError(f"not an image: {exc}") from exc
        image = image.convert("RGB")
        pixels = np.asarray(image).astype(int)
        distance = np.abs(pixels - pixels[0, 0]).sum(axis=2)
        alpha = np.where(distance > 60, 255, 0).astype(np.uint8)
        return Cutout(image, Image.fromarray(alpha, "L"))


REMBG_MEAN, REMBG_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = Path(__file__).parent / "fixtures" / "photos"  # real photos, see its README


def rembg_normalize(image: Image.Image) -> np.ndarray:
    """rembg 2.0.86's `BaseSession.normalize` for u2netp, as it is written there."""
    im = image.convert("RGB").resize((320, 320), Image.Resampling.LANCZOS)
    ary = np.array(im)
    ary = ary / max(np.max(ary), 1e-6)
    tmp = np.zeros((ary.shape[0], ary.shape[1], 3))
    for channel in range(3):
        tmp[:, :, channel] = (ary[:, :, channel] - REMBG_MEAN[channel]) / REMBG_STD[channel]
    return np.expand_dims(tmp.transpose((2, 0, 1)), 0).astype(np.float32)


def rembg_mask(prediction: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """rembg 2.0.86's `U2netpSession.predict` after the model, as it is written there."""
    pred = prediction[:, 0, :, :]
    pred = np.squeeze((pred - np.min(pred)) / (np.max(pred) - np.min(pred)))
    mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
    return mask.resize(size, Image.Resampling.LANCZOS)
