"""Where the local engine's CPU goes per photo, and what each cheaper step would cost.

    .venv/bin/python bench/engine_stages.py --photos DIR [--limit 24]

`DIR` holds JPEG photos (`bench/rembg_compare.py --keep DIR` leaves its photos there). One
image at a time, on one thread, it times each step of the engine's path (median ms over
the photos): hashing the bytes, decoding, the resize to 320 and normalising, one
single-threaded model run, the mask back to full size, rendering the default output
(compositing and PNG encoding), and PNG encoding alone at zlib levels 6, 4, 3 and 1. Then the
alternatives the issue named, with what they change in the masks (IoU of alpha >= 128
against the engine's own path, worst photo) or in the files:

- JPEG draft mode (`Image.draft`: libjpeg decodes at 1/2, 1/4 or 1/8 scale, no smaller than
  320) for the model's input, instead of the full decode's LANCZOS resize;
- a box-then-LANCZOS downscale (`reducing_gap=1.5`) instead of rembg's plain LANCZOS;
- PNG zlib levels 1-6 (time and mean file size).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from daemon import imaging
from daemon.engines import local, onnx_session
from daemon.engines.u2net_io import MODEL_SIDE, mask_image, model_input
from daemon.models import Cutout, CutoutOptions, OutputSpec
from daemon.rendering import render


def timed(times: dict[str, list[float]], name: str, step: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = step()
    times.setdefault(name, []).append(1000 * (time.perf_counter() - started))
    return result


def draft_input(data: bytes) -> np.ndarray:
    """The model's input from a JPEG decoded at the smallest DCT scale >= 320 px."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (MODEL_SIDE, MODEL_SIDE))
    return model_input(image.convert("RGB"))


def gap_input(image: Image.Image) -> np.ndarray:
    small = image.resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.LANCZOS, reducing_gap=1.5)
    return model_input(small)


def png(image: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def iou(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a) >= 128, np.asarray(b) >= 128
    union = int((x | y).sum())
    return 1.0 if union == 0 else int((x & y).sum()) / union


def profile(
    session: Any, data: bytes, times: dict[str, list[float]], rows: dict[str, list[float]]
) -> None:
    timed(times, "sha256 of the bytes", lambda: hashlib.sha256(data).hexdigest())
    image = timed(times, "decode (full size)", lambda: imaging.decode_image(data))
    tensor = timed(times, "resize to 320 + normalise", lambda: model_input(image))
    run = onnx_session.run_model
    prediction = timed(times, "model run (1 thread)", lambda: run(session, tensor))
    mask = timed(times, "mask to full size", lambda: mask_image(prediction, image.size))
    cutout = Cutout(image, imaging.combined_alpha(image, mask))
    spec = OutputSpec.from_options(CutoutOptions())
    timed(times, "render: composite + PNG (the default output)", lambda: render(cutout, spec))
    rgba = image.convert("RGB")
    rgba.putalpha(cutout.alpha)
    for level in (6, 4, 3, 1):
        encoded = timed(times, f"PNG level {level}", lambda z=level: png(rgba, z))
        rows.setdefault(f"PNG level {level} KB", []).append(len(encoded) / 1024)
    drafted = timed(times, "draft decode + resize + normalise", lambda: draft_input(data))
    rows.setdefault("IoU draft", []).append(
        iou(mask, mask_image(run(session, drafted), image.size))
    )
    gap = timed(times, "reducing_gap resize + normalise", lambda: gap_input(image))
    rows.setdefault("IoU reducing_gap", []).append(
        iou(mask, mask_image(run(session, gap), image.size))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=24)
    args = parser.parse_args()
    path = local.locate_model(local.MODELS["u2netp"])
    options = onnx_session.session_options(1, spin=False, shared_arena=False)
    session = onnx_session.open_session(path, options, [onnx_session.CPU])
    times: dict[str, list[float]] = {}
    rows: dict[str, list[float]] = {}
    photos = sorted(args.photos.glob("*.jpg"))[: args.limit]
    for photo in photos:
        profile(session, photo.read_bytes(), times, rows)
    sizes = [Image.open(p).size for p in photos]
    print(f"{len(photos)} photos, {min(sizes)}-{max(sizes)} px; median ms per photo, 1 thread")
    print("| step | median ms |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} |")
    for name, values in rows.items():
        if name.startswith("IoU"):
            print(f"| {name} vs the engine's path (worst, mean) | {min(values):.4f}, "
                  f"{statistics.mean(values):.4f} |")  # fmt: skip
        else:
            print(f"| {name} (mean) | {statistics.mean(values):.1f} |")


if __name__ == "__main__":
    main()
