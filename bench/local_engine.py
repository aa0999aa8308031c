"""Benchmark the local engine against a plain sequential `rembg p`-style loop.

    .venv/bin/python bench/local_engine.py [--images 40] [--workers 2,2r1] [--rounds 3]

Generates `--images` synthetic 1024x1024 product shots (a shaded shape on a flat or
gradient backdrop, with sensor-like noise, saved as JPEG q90) and their true masks. Then,
for each round, runs every variant in its own subprocess (so `ru_maxrss` is that variant's
peak RSS) over the same files, writing PNG cutouts to disk:

- `sequential`: one image at a time through the same u2netp model, like `rembg p`: a
  default onnxruntime session (CPU arena on, default threads) and rembg's own code path
  (LANCZOS to 320, float64 normalising, LANCZOS mask back, `Image.composite`, PNG at
  Pillow's default level). `--with-rembg` adds `rembg-lib`, which calls the installed
  lite package's real `rembg.remove()` to show the hand copy is faithful.
- `engine-wN`: `LocalEngine(workers=N)` fed by a ThreadPoolExecutor of N threads, with its
  defaults (on 2 cores: two single-threaded model runs at once, staggered); `engine-wNrR`
  the same with `model_runs=R` (`engine-w2r1`: one run at a time on both cores).

Two images per variant warm up first and are not timed, nor is loading. Rounds alternate
the variants so that drift on a shared machine hits all of them alike; the figures are
medians over rounds, with the cores other processes used meanwhile (/proc/stat). `--profile`
also times each stage on one thread. Figures and their reading: docs/benchmarks.md.
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
from daemon.engines import local
from daemon.engines.local import LocalEngine, mask_image, model_input, run_model
from daemon.models import Cutout, EngineJob, Item, ItemStatus, OutputSpec
from daemon.rendering import render

ROOT = Path(__file__).resolve().parent.parent

WARMUP = 2
IDLE_RELEASE = 1.0  # seconds; `rss_after_mb` is read once the engine has released
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

    path = local.locate_model(local.MODELS["u2netp"])
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
        from rembg import new_session, remove  # type: ignore[import-untyped]

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
    return EngineJob(item, path.read_bytes, refuse, refuse)


def refuse(*_: object) -> Any:
    raise AssertionError("the local engine needs no link and submits nothing")


def make_engine(variant: str, threads: int | None) -> LocalEngine:
    """`engine-w2`: 2 workers, default model runs; `engine-w2r1`: 2 workers, 1 model run."""
    workers, _, runs = variant.removeprefix("engine-w").partition("r")
    engine = LocalEngine(
        workers=int(workers),
        model_runs=int(runs) if runs else None,
        threads=threads,
        idle_release=IDLE_RELEASE,
    )
    engine.start()
    return engine


def engine_loop(engine: LocalEngine) -> Callable[[list[Path], Path], None]:
    def one(path: Path, out: Path) -> None:
        (out / f"{path.stem}.png").write_bytes(render(engine.cut_out(job_for(path)), OutputSpec()))

    def run(paths: list[Path], out: Path) -> None:
        with ThreadPoolExecutor(engine.workers) as pool:
            list(pool.map(lambda path: one(path, out), paths))

    return run


# ---------------------------------------------------------------- one variant, one process


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:8]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def mean_iou(paths: list[Path], out: Path) -> float:
    scores = []
    for path in paths:
        with Image.open(out / f"{path.stem}.png") as cutout:
            alpha = np.asarray(cutout.getchannel("A")) >= 128
        with Image.open(path.with_suffix(".mask.png")) as mask:
            truth = np.asarray(mask) >= 128
        scores.append((alpha & truth).sum() / max((alpha | truth).sum(), 1))
    return float(np.mean(scores))


def wait_for_idle_release(engine: LocalEngine | None) -> None:
    """Until the engine has handed its arena back (the sequential loop never does)."""
    deadline = time.monotonic() + IDLE_RELEASE + 30
    while engine is not None and not engine.idle_releases and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(IDLE_RELEASE)


def run_variant(variant: str, folder: Path, threads: int | None) -> dict[str, Any]:
    paths = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    engine = None
    if variant in ("sequential", "rembg-lib"):
        run = make_sequential(variant == "rembg-lib")
    else:
        engine = make_engine(variant, threads)
        run = engine_loop(engine)
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        run(paths[:WARMUP], out)
        usage, busy = resource.getrusage(resource.RUSAGE_SELF), busy_cpu_seconds()
        started = time.perf_counter()
        run(paths, out)
        seconds = time.perf_counter() - started
        after, busy = resource.getrusage(resource.RUSAGE_SELF), busy_cpu_seconds() - busy
        sizes = [(out / f"{p.stem}.png").stat().st_size for p in paths]
        iou = mean_iou(paths, out)
        wait_for_idle_release(engine)
        rss_after = resident_mb()
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return {
        "variant": variant,
        "images": len(paths),
        "seconds": seconds,
        "images_per_min": 60 * len(paths) / seconds,
        "cpu_s_per_image": cpu / len(paths),
        "others_cores": max(busy - cpu, 0.0) / seconds,  # what other processes used meanwhile
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


def profile_one(ours: Any, theirs: Any, data: bytes, stages: dict[str, Any]) -> None:
    engine, sequential = stages["engine, per stage"], stages["sequential"]
    image = timed(engine, "decode", lambda: imaging.decode_image(data))
    tensor = timed(engine, "to 320 + normalise", lambda: model_input(image))
    raw = timed(engine, "inference (1 thread)", lambda: run_model(ours, tensor))
    mask = timed(engine, "mask to full size", lambda: mask_image(raw, image.size))
    cutout = Cutout(image, imaging.combined_alpha(image, mask))
    timed(engine, "compose + PNG", lambda: render(cutout, OutputSpec()))
    timed(sequential, "whole image", lambda: rembg_remove(theirs, data))
    timed(sequential, "inference (default threads)", lambda: run_model(theirs, tensor))


def profile(folder: Path) -> dict[str, dict[str, float]]:
    """Median wall ms per stage, one image at a time, for both code paths."""
    ours = local.open_session(
        local.locate_model(local.MODELS["u2netp"]), 1, spin=False, shared_arena=False
    )
    theirs = open_default_session()
    stages: dict[str, Any] = {"engine, per stage": {}, "sequential": {}}
    for path in sorted(folder.glob("*.jpg"))[:10]:
        profile_one(ours, theirs, path.read_bytes(), stages)
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
    if args.stagger is not None:
        command += ["--stagger", str(args.stagger)]
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
        keys = ("images_per_min", "cpu_s_per_image", "others_cores", "peak_rss_mb", "rss_after_mb")
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
        "| other processes, cores | peak RSS MB (median, max) | RSS after MB | mean PNG KB "
        "| mean IoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, s in summary.items():
        print(
            f"| {variant} | {s['images_per_min']:.1f} | {s['ratio_median']:.2f}x, "
            f"{s['ratio_min']:.2f}x | {s['cpu_s_per_image']:.2f} | {s['others_cores']:.2f} "
            f"| {s['peak_rss_mb']:.0f}, "
            f"{s['max_peak_rss_mb']:.0f} | {s['rss_after_mb']:.0f} | {s['mean_png_kb']:.0f} "
            f"| {s['mean_iou']:.3f} |"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument(
        "--workers", default="2,2r1", help="engine variants: N or NrR, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="engine intra-op threads")
    parser.add_argument("--png-level", type=int, default=None, help="engine PNG zlib level")
    parser.add_argument("--stagger", type=float, default=None, help="engine ModelGate.STAGGER")
    parser.add_argument("--with-rembg", action="store_true", help="also time rembg.remove()")
    parser.add_argument("--profile", action="store_true", help="also time each stage")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.png_level is not None:
        imaging.PNG_COMPRESS_LEVEL = args.png_level
    if args.stagger is not None:
        local.ModelGate.STAGGER = args.stagger
    if args.run:
        print(json.dumps(run_variant(args.run, args.inputs, args.threads)))
        return
    variants = ["sequential"] + [f"engine-w{n}" for n in args.workers.split(",")]
    variants += ["rembg-lib"] if args.with_rembg else []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_inputs(folder, args.images)
        rounds = []
        for number in range(args.rounds):
            rounds.append([child(variant, folder, args) for variant in variants])
            print(f"round {number + 1}: {json.dumps(rounds[-1])}", file=sys.stderr)
        stages = profile(folder) if args.profile else None
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.platform()}, {os.cpu_count()} CPUs, "
          f"{args.images} images of {SIDE}x{SIDE}, {args.rounds} rounds; load average "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip
    print_table(summarise(rounds))
    if stages:
        print(json.dumps(stages, indent=1))


if __name__ == "__main__":
    main()
