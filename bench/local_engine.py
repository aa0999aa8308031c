"""Benchmark the local engine against a plain sequential `rembg p`-style loop.

    .venv/bin/python bench/local_engine.py [--images 40] [--workers 2,3] [--rounds 3]

Generates `--images` synthetic 1024x1024 product shots (a shaded shape on a flat or
gradient backdrop, with sensor-like noise, saved as JPEG q90) and their true masks. Then,
for each round, runs every variant in its own subprocess (so `ru_maxrss` is that variant's
peak RSS) over the same files, writing PNG cutouts to disk:

- `sequential`: one image at a time through the same u2netp model, like `rembg p`: a
  default onnxruntime session (CPU arena on, default threads) and rembg's own code path
  (LANCZOS to 320, float64 normalising, LANCZOS mask back, `Image.composite`, PNG at
  Pillow's default level). `--with-rembg` adds `rembg-lib`, which calls the installed
  lite package's real `rembg.remove()` to show the hand copy is faithful.
- `engine-wN`: `LocalEngine(workers=N)` fed by a ThreadPoolExecutor of N threads.

Two images per variant warm up first and are not timed; session loading is not timed.
Rounds alternate the variants so that drift on a shared machine hits all of them alike;
the figures are medians over rounds. `--profile` also times each stage on one thread.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from daemon import imaging
from daemon.engines.local import MODELS as LOCAL_MODELS
from daemon.engines.local import LocalEngine, locate_model, mask_image, model_input
from daemon.models import CutoutOptions, EngineJob, Item, ItemStatus, SubmittedJob

ROOT = Path(__file__).resolve().parent.parent

WARMUP = 2
IDLE_RELEASE = 1.0  # seconds; `rss_after_mb` is read after twice this
SIDE = 1024


# ---------------------------------------------------------------- synthetic inputs


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


def write_inputs(folder: Path, count: int) -> list[Path]:
    paths = []
    for seed in range(count):
        image, mask = product_shot(seed)
        path = folder / f"{seed:03d}.jpg"
        image.save(path, quality=90)
        mask.save(folder / f"{seed:03d}.mask.png")
        paths.append(path)
    return paths


# ---------------------------------------------------------------- the sequential loop


def open_default_session() -> Any:
    """What rembg's new_session("u2netp") builds: default options (arena on, all threads)."""
    import onnxruntime as ort

    path = locate_model(LOCAL_MODELS["u2netp"])
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def rembg_predict(session: Any, image: Image.Image) -> Image.Image:
    """rembg's SimpleSession.predict and BaseSession.normalize, step for step."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    small = np.array(image.convert("RGB").resize((320, 320), Image.Resampling.LANCZOS))
    scaled = small / np.max(small)
    tensor = np.zeros((320, 320, 3))
    for channel, (m, d) in enumerate(zip(mean, std, strict=True)):
        tensor[:, :, channel] = (scaled[:, :, channel] - m) / d
    feeds = {session.get_inputs()[0].name: tensor.transpose(2, 0, 1)[None].astype(np.float32)}
    prediction = session.run(None, feeds)[0][:, 0, :, :]
    prediction = np.squeeze((prediction - prediction.min()) / (prediction.max() - prediction.min()))
    mask = Image.fromarray((prediction * 255).astype("uint8"))
    return mask.resize(image.size, Image.Resampling.LANCZOS)


def rembg_remove(session: Any, data: bytes) -> bytes:
    """rembg.bg.remove(data) with defaults: naive_cutout, then PNG at the default level."""
    image = Image.open(io.BytesIO(data))
    mask = rembg_predict(session, image)
    cutout = Image.composite(image, Image.new("RGBA", image.size, 0), mask)
    buffer = io.BytesIO()
    cutout.save(buffer, "PNG")
    return buffer.getvalue()


def make_sequential(use_rembg_lib: bool) -> Callable[[list[Path], Path], None]:
    if use_rembg_lib:  # the installed lite package's own code, for a cross-check only
        from rembg import new_session, remove

        lib_session = new_session("u2netp")

        def convert(data: bytes) -> bytes:
            return bytes(remove(data, session=lib_session))
    else:
        session = open_default_session()

        def convert(data: bytes) -> bytes:
            return rembg_remove(session, data)

    def run(paths: list[Path], out: Path) -> None:
        for path in paths:
            (out / f"{path.stem}.png").write_bytes(convert(path.read_bytes()))

    return run


# ---------------------------------------------------------------- the engine


def job_for(path: Path) -> EngineJob:
    now = datetime.now(UTC)
    item = Item(
        1, path.name, path.name.lower(), "rev", "hash", 0, ItemStatus.PROCESSING, 0, None,
        None, "local", None, None, None, now, now, None, None, None,
    )  # fmt: skip

    def no_link() -> str:
        raise AssertionError("the local engine needs no link")

    def no_submission(job: SubmittedJob) -> None:
        raise AssertionError("the local engine submits nothing")

    return EngineJob(item, CutoutOptions(), path.read_bytes, no_link, no_submission)


def make_engine(workers: int, threads: int | None) -> Callable[[list[Path], Path], None]:
    engine = LocalEngine(workers=workers, threads=threads, idle_release=IDLE_RELEASE)
    engine.start()

    def one(path: Path, out: Path) -> None:
        (out / f"{path.stem}.png").write_bytes(engine.cut_out(job_for(path)).data)

    def run(paths: list[Path], out: Path) -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda path: one(path, out), paths))

    return run


# ---------------------------------------------------------------- one variant, one process


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def mean_iou(paths: list[Path], out: Path) -> float:
    scores = []
    for path in paths:
        with Image.open(out / f"{path.stem}.png") as cutout:
            alpha = np.asarray(cutout.getchannel("A")) >= 128
        with Image.open(path.with_suffix(".mask.png")) as mask:
            truth = np.asarray(mask) >= 128
        scores.append((alpha & truth).sum() / max((alpha | truth).sum(), 1))
    return float(np.mean(scores))


def run_variant(variant: str, folder: Path, threads: int | None) -> dict[str, Any]:
    paths = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    if variant in ("sequential", "rembg-lib"):
        run = make_sequential(variant == "rembg-lib")
    else:
        run = make_engine(int(variant.removeprefix("engine-w")), threads)
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        run(paths[:WARMUP], out)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        run(paths, out)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        sizes = [(out / f"{p.stem}.png").stat().st_size for p in paths]
        iou = mean_iou(paths, out)
        time.sleep(2 * IDLE_RELEASE)
        rss_after = resident_mb()
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return {
        "variant": variant,
        "images": len(paths),
        "seconds": seconds,
        "images_per_min": 60 * len(paths) / seconds,
        "cpu_s_per_image": cpu / len(paths),
        "peak_rss_mb": after.ru_maxrss / 1024,
        "rss_after_mb": rss_after,
        "load_s": load_s,
        "mean_png_kb": statistics.mean(sizes) / 1024,
        "mean_iou": iou,
    }


# ---------------------------------------------------------------- stage profile


def timed(stages: dict[str, list[float]], name: str, step: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = step()
    stages.setdefault(name, []).append(time.perf_counter() - started)
    return result


def profile_one(engine: LocalEngine, session: Any, data: bytes, stages: dict[str, Any]) -> None:
    ours, theirs = stages["engine, per stage"], stages["sequential"]
    image = timed(ours, "decode", lambda: imaging.decode_image(data))
    tensor = timed(ours, "to 320 + normalise", lambda: model_input(image))
    feeds = {engine._session.get_inputs()[0].name: tensor}
    outputs = [engine._session.get_outputs()[0].name]
    raw = timed(ours, "inference", lambda: engine._session.run(outputs, feeds)[0])
    mask = timed(ours, "mask to full size", lambda: mask_image(raw, image.size))
    timed(ours, "compose + PNG", lambda: imaging.compose_output(image, mask, CutoutOptions()))
    timed(theirs, "whole image", lambda: rembg_remove(session, data))
    timed(theirs, "inference", lambda: session.run(None, feeds))


def profile(folder: Path) -> dict[str, dict[str, float]]:
    """Median ms per stage, one image at a time, for both code paths."""
    engine = LocalEngine(workers=2)
    engine.start()
    session = open_default_session()
    stages: dict[str, Any] = {"engine, per stage": {}, "sequential": {}}
    for path in sorted(folder.glob("*.jpg"))[:10]:
        profile_one(engine, session, path.read_bytes(), stages)
    return {
        name: {stage: 1000 * statistics.median(times) for stage, times in values.items()}
        for name, values in stages.items()
    }


# ---------------------------------------------------------------- driver


def child(variant: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--run", variant, "--inputs", str(folder)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.png_level is not None:
        command += ["--png-level", str(args.png_level)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise(rounds: list[list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for variant in [r["variant"] for r in rounds[0]]:
        runs = [r for one in rounds for r in one if r["variant"] == variant]
        ratios = [
            r["images_per_min"]
            / next(s for s in one if s["variant"] == "sequential")["images_per_min"]
            for one in rounds
            for r in one
            if r["variant"] == variant
        ]
        keys = ("images_per_min", "cpu_s_per_image", "peak_rss_mb", "rss_after_mb")
        summary[variant] = {k: statistics.median(r[k] for r in runs) for k in keys}
        summary[variant]["max_peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        summary[variant]["ratio_median"] = statistics.median(ratios)
        summary[variant]["ratio_min"] = min(ratios)
        summary[variant]["mean_png_kb"] = runs[0]["mean_png_kb"]
        summary[variant]["mean_iou"] = runs[0]["mean_iou"]
    return summary


def print_table(summary: dict[str, dict[str, float]]) -> None:
    print(
        "| variant | images/min (median) | vs sequential (median, worst round) | CPU s/image "
        "| peak RSS MB (median, max) | RSS after MB | mean PNG KB | mean IoU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, s in summary.items():
        print(
            f"| {variant} | {s['images_per_min']:.1f} | {s['ratio_median']:.2f}x, "
            f"{s['ratio_min']:.2f}x | {s['cpu_s_per_image']:.2f} | {s['peak_rss_mb']:.0f}, "
            f"{s['max_peak_rss_mb']:.0f} | {s['rss_after_mb']:.0f} | {s['mean_png_kb']:.0f} "
            f"| {s['mean_iou']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--workers", default="2,3", help="engine worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="engine intra-op threads")
    parser.add_argument("--png-level", type=int, default=None, help="engine PNG zlib level")
    parser.add_argument("--with-rembg", action="store_true", help="also time rembg.remove()")
    parser.add_argument("--profile", action="store_true", help="also time each stage")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.png_level is not None:
        imaging.PNG_COMPRESS_LEVEL = args.png_level
    if args.run:
        print(json.dumps(run_variant(args.run, args.inputs, args.threads)))
        return
    variants = ["sequential"] + [f"engine-w{n}" for n in args.workers.split(",")]
    variants += ["rembg-lib"] if args.with_rembg else []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_inputs(folder, args.images)
        rounds = []
        for number in range(args.rounds):
            rounds.append([child(variant, folder, args) for variant in variants])
            print(f"round {number + 1}: {json.dumps(rounds[-1])}", file=sys.stderr)
        stages = profile(folder) if args.profile else None
    print(f"{datetime.now(UTC):%Y-%m-%d}, {platform.platform()}, {os.cpu_count()} CPUs, "
          f"{args.images} images of {SIDE}x{SIDE}, {args.rounds} rounds")  # fmt: skip
    print_table(summarise(rounds))
    if stages:
        print(json.dumps(stages, indent=1))


if __name__ == "__main__":
    main()
