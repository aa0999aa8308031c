"""`cutoutd run --once` against the real `rembg p -m u2netp`, whole process against whole process.

    .venv/bin/python bench/rembg_compare.py [--counts 24,96] [--pairs 3] [--engine KEY=VALUE]

1. Installs `rembg[cpu,cli]` (pinned, `--rembg`) into its own venv (`--bench-venv`, default
   `.bench-venv/`, git-ignored), never into the project's. rembg is not a project dependency.
2. Points rembg at the model cutoutd ships: a folder holding a link to the bundled
   `u2netp.onnx` becomes `U2NET_HOME`, so rembg finds the file and downloads nothing. Both
   commands run inside `unshare -n` (no network) where the kernel allows it.
3. Writes the photos: scikit-image's bundled sample photos (BSD-licensed, from the bench
   venv, where rembg pulls scikit-image in), each made distinct by a small rotation, a crop,
   a mirror and a size (640-1024 px on the long side), saved as JPEG q90, every file's bytes
   different (checked), and old enough that cutoutd's settle check does not wait for them.
4. For each count, runs the pairs alternately (rembg first in even pairs, cutoutd first in
   odd ones), each command as a fresh process on a fresh copy of the inputs, and reads its
   wall time, CPU time (user + system) and peak RSS (`wait4`'s rusage for that process).
   The ratio of a pair is rembg's wall time over cutoutd's: above 1, cutoutd is faster.
5. Mask agreement per photo, on the largest count: IoU of alpha >= 128 and the mean
   absolute alpha difference (0-255), of cutoutd's output against (a) the fp32 path run
   in this process with onnxruntime (`LocalEngine` with precision "fp32" on the CPU), and
   (b) rembg's output.

`--engine precision=fast` (repeatable) adds `[engine]` keys to cutoutd's config. `--json`
writes every figure. The figures and their reading: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from daemon.engines import local

ROOT = Path(__file__).resolve().parent.parent
REMBG = "rembg[cpu,cli]==2.0.86"
# scikit-image's bundled photographs (not the synthetic or microscopy ones).
SAMPLES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "coins.png",
)
SIZES = (1024, 800, 640)


# ---------------------------------------------------------------- the bench venv


def ensure_bench_venv(venv: Path, requirement: str) -> Path:
    """The venv's `rembg` command, installing `requirement` there first when missing."""
    rembg = venv / "bin" / "rembg"
    if rembg.exists():
        return rembg
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, requirement], check=True)
    return rembg


def sample_folder(venv: Path) -> Path:
    code = "import os, skimage.data; print(os.path.dirname(skimage.data.__file__))"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True
    )
    return Path(done.stdout.strip())


def rembg_version(venv: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('rembg'), m.version('onnxruntime'))"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True
    )
    rembg, ort = done.stdout.split()
    return f"rembg {rembg}, onnxruntime {ort}"


# ---------------------------------------------------------------- the photos


def variant(photo: Image.Image, number: int) -> Image.Image:
    """The `number`th distinct version of a photo: rotated 1-5 degrees either way, cropped
    to 90 % off-centre, mirrored every other time, scaled to 640-1024 px on the long side."""
    angle = (1 + number % 5) * (-1 if number % 2 else 1)
    turned = photo.rotate(angle, Image.Resampling.BICUBIC, expand=False)
    width, height = turned.size
    left, top = (number % 3) * width // 20, (number % 4) * height // 30
    cropped = turned.crop((left, top, left + width * 9 // 10, top + height * 9 // 10))
    if number % 2:
        cropped = ImageOps.mirror(cropped)
    side = SIZES[number % len(SIZES)]
    scale = side / max(cropped.size)
    size = (round(cropped.width * scale), round(cropped.height * scale))
    return cropped.resize(size, Image.Resampling.LANCZOS)


def write_photos(samples: Path, folder: Path, count: int) -> list[Path]:
    """`count` JPEGs, no two with the same bytes, modified an hour ago."""
    originals = [Image.open(samples / name).convert("RGB") for name in SAMPLES]
    paths, digests = [], set()
    for number in range(count):
        source = originals[number % len(originals)]
        path = folder / f"{number:03d}-{SAMPLES[number % len(SAMPLES)].split('.')[0]}.jpg"
        variant(source, number // len(originals) + number).save(path, quality=90)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in digests:
            raise SystemExit(f"photo {path.name} repeats another's bytes")
        digests.add(digest)
        an_hour_ago = time.time() - 3600
        os.utime(path, (an_hour_ago, an_hour_ago))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- one command


@dataclass(frozen=True, slots=True)
class Run:
    tool: str
    photos: int
    pair: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    outputs: int


def offline() -> list[str]:
    """`unshare -n` where it works: the command then has no network at all."""
    try:
        subprocess.run(["unshare", "-n", "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return []
    return ["unshare", "-n"]


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """Wall s, CPU s (user + system) and peak RSS MB of one process (`wait4` rusage)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    errors = process.stderr.read()  # drained as it comes: no pipe stalls the command
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{command[0:4]} failed ({process.returncode}): {errors[-2000:]!r}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run_rembg(rembg: Path, model_home: Path, photos: Path, out: Path, pair: int) -> Run:
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "U2NET_HOME": str(model_home)}
    command = [*offline(), str(rembg), "p", "-m", "u2netp", str(photos), str(out)]
    wall, cpu, rss = timed(command, env, out.parent)
    count = len(list(out.glob("*.png")))
    return Run("rembg", len(list(photos.glob("*.jpg"))), pair, wall, cpu, rss, count)


def run_cutoutd(photos: Path, root: Path, engine_keys: list[str], pair: int) -> Run:
    (root / "input").mkdir(parents=True)
    for photo in photos.glob("*.jpg"):
        shutil.copy2(photo, root / "input" / photo.name)  # keeps the hour-old mtime
    config = root.parent / f"{root.name}.toml"
    lines = ["[source]", f'root = "{root}"', "[engine]", *engine_keys]
    config.write_text("\n".join(lines) + "\n")
    cutoutd = Path(sys.executable).with_name("cutoutd")
    command = [*offline(), str(cutoutd), "--config", str(config), "run", "--once"]
    wall, cpu, rss = timed(command, dict(os.environ), root.parent)
    count = len(list((root / "output").glob("*.png")))
    return Run("cutoutd", len(list(photos.glob("*.jpg"))), pair, wall, cpu, rss, count)


# ---------------------------------------------------------------- mask agreement


def alpha_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.getchannel("A"), dtype=np.int16)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """IoU of alpha >= 128 (1.0 when both are empty) and mean |alpha difference|."""
    mine, other = ours >= 128, theirs >= 128
    union = int((mine | other).sum())
    iou = 1.0 if union == 0 else int((mine & other).sum()) / union
    return iou, float(np.abs(ours - theirs).mean())


def fp32_alpha(engine: local.LocalEngine, photo: Path) -> np.ndarray:
    """The alpha of the fp32 onnxruntime path on the CPU, run here."""
    from daemon import imaging

    image = imaging.decode_image(photo.read_bytes())
    mask = engine.predict_mask(image)
    return np.asarray(mask, dtype=np.int16)


def agreements(photos: Path, cutoutd_out: Path, rembg_out: Path) -> list[dict[str, Any]]:
    engine = local.LocalEngine(workers=1, idle_release=None, device="cpu")
    engine.start()
    rows = []
    for photo in sorted(photos.glob("*.jpg")):
        ours = alpha_of(cutoutd_out / f"{photo.stem}.png")
        iou_fp32, diff_fp32 = agreement(ours, fp32_alpha(engine, photo))
        iou_rembg, diff_rembg = agreement(ours, alpha_of(rembg_out / f"{photo.stem}.png"))
        with Image.open(photo) as image:
            size = image.size
        rows.append(
            {
                "photo": photo.name,
                "size": f"{size[0]}x{size[1]}",
                "iou_fp32": iou_fp32,
                "mean_diff_fp32": diff_fp32,
                "iou_rembg": iou_rembg,
                "mean_diff_rembg": diff_rembg,
            }
        )
    engine.close()
    return rows


# ---------------------------------------------------------------- driver


def warm_up(venv: Path, rembg: Path, home: Path, engine_keys: list[str], scratch: Path) -> None:
    """One untimed pair on 2 photos: rembg's first run compiles pymatting's numba code into
    its cache (~70 CPU-s), and both write their bytecode caches."""
    photos = scratch / "photos-warm-up"
    photos.mkdir()
    write_photos(sample_folder(venv), photos, 2)
    run_rembg(rembg, home, photos, scratch / "warm-up" / "rembg-out", 0)
    run_cutoutd(photos, scratch / "warm-up" / "cutoutd", engine_keys, 0)


def one_pair(
    pair: int, photos: Path, rembg: Path, home: Path, engine_keys: list[str], scratch: Path
) -> tuple[Run, Run, Path, Path]:
    work = scratch / f"pair-{photos.name}-{pair}"
    work.mkdir()
    rembg_out, root = work / "rembg-out", work / "cutoutd"
    load = os.getloadavg()[0]
    runs: dict[str, Run] = {}
    for tool in ("rembg", "cutoutd") if pair % 2 == 0 else ("cutoutd", "rembg"):
        if tool == "rembg":
            runs[tool] = run_rembg(rembg, home, photos, rembg_out, pair)
        else:
            runs[tool] = run_cutoutd(photos, root, engine_keys, pair)
    ours, theirs = runs["cutoutd"], runs["rembg"]
    print(
        f"{ours.photos} photos, pair {pair} ({'rembg' if pair % 2 == 0 else 'cutoutd'} first, "
        f"load {load:.2f}): cutoutd {ours.wall_s:.2f} s {ours.cpu_s:.1f} CPU-s "
        f"{ours.peak_rss_mb:.0f} MB | rembg {theirs.wall_s:.2f} s {theirs.cpu_s:.1f} CPU-s "
        f"{theirs.peak_rss_mb:.0f} MB | ratio {theirs.wall_s / ours.wall_s:.2f}x",
        file=sys.stderr,
    )
    return ours, theirs, root / "output", rembg_out


def summary_table(runs: list[tuple[Run, Run]]) -> str:
    lines = [
        "| photos | pair (first) | cutoutd wall s | cutoutd CPU s | cutoutd peak MB "
        "| rembg wall s | rembg CPU s | rembg peak MB | ratio (rembg wall / cutoutd wall) "
        "| CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ours, theirs in runs:
        first = "rembg" if ours.pair % 2 == 0 else "cutoutd"
        lines.append(
            f"| {ours.photos} | {ours.pair + 1} ({first}) | {ours.wall_s:.2f} | {ours.cpu_s:.1f} "
            f"| {ours.peak_rss_mb:.0f} | {theirs.wall_s:.2f} | {theirs.cpu_s:.1f} "
            f"| {theirs.peak_rss_mb:.0f} | **{theirs.wall_s / ours.wall_s:.2f}x** "
            f"| {theirs.cpu_s / ours.cpu_s:.2f}x |"
        )
    for count in sorted({ours.photos for ours, _ in runs}):
        ratios = [t.wall_s / o.wall_s for o, t in runs if o.photos == count]
        cpu_ratios = [t.cpu_s / o.cpu_s for o, t in runs if o.photos == count]
        lines.append(
            f"| {count} | median of {len(ratios)} | "
            f"{statistics.median(o.wall_s for o, _ in runs if o.photos == count):.2f} | | "
            f"{max(o.peak_rss_mb for o, _ in runs if o.photos == count):.0f} (max) | "
            f"{statistics.median(t.wall_s for o, t in runs if o.photos == count):.2f} | | "
            f"{max(t.peak_rss_mb for o, t in runs if o.photos == count):.0f} (max) | "
            f"**{statistics.median(ratios):.2f}x** (min {min(ratios):.2f}x) "
            f"| {statistics.median(cpu_ratios):.2f}x |"
        )
    return "\n".join(lines)


def agreement_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| photo | size | IoU vs fp32 | mean abs diff vs fp32 | IoU vs rembg | mean abs diff vs rembg |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["iou_rembg"], r["iou_fp32"])):
        lines.append(
            f"| {row['photo']} | {row['size']} | {row['iou_fp32']:.4f} "
            f"| {row['mean_diff_fp32']:.2f} | {row['iou_rembg']:.4f} "
            f"| {row['mean_diff_rembg']:.2f} |"
        )
    worst = min(r["iou_fp32"] for r in rows), min(r["iou_rembg"] for r in rows)
    lines.append(f"\nworst IoU: {worst[0]:.4f} vs fp32, {worst[1]:.4f} vs rembg")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="24,96", help="photo counts, comma-separated")
    parser.add_argument("--pairs", type=int, default=3, help="alternated pairs per count")
    parser.add_argument("--engine", action="append", default=[], help="[engine] KEY=VALUE")
    parser.add_argument("--bench-venv", type=Path, default=ROOT / ".bench-venv")
    parser.add_argument("--rembg", default=REMBG, help="the pip requirement for rembg")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", type=Path, help="keep the photos and outputs here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rembg = ensure_bench_venv(args.bench_venv, args.rembg)
    counts = [int(count) for count in args.counts.split(",")]
    engine_keys = [f"{k} = {json.dumps(v)}" for k, _, v in (e.partition("=") for e in args.engine)]
    scratch = Path(tempfile.mkdtemp(prefix="rembg-compare-", dir=args.keep))
    home = scratch / "u2net-home"
    home.mkdir()
    (home / "u2netp.onnx").symlink_to(local.locate_model(local.MODELS["u2netp"]))
    started = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    load_before = os.getloadavg()
    warm_up(args.bench_venv, rembg, home, engine_keys, scratch)
    runs, last = [], None
    for count in counts:
        photos = scratch / f"photos-{count}"
        photos.mkdir()
        write_photos(sample_folder(args.bench_venv), photos, count)
        for pair in range(args.pairs):
            ours, theirs, ours_out, rembg_out = one_pair(
                pair, photos, rembg, home, engine_keys, scratch
            )
            runs.append((ours, theirs))
            last = (photos, ours_out, rembg_out)
    assert last is not None
    rows = agreements(*last)
    header = (
        f"{started}, {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {rembg_version(args.bench_venv)}; cutoutd [engine] "
        f"{engine_keys or 'defaults'}; load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; network: {'none (unshare -n)' if offline() else 'on'}"
    )
    print(header)
    print(summary_table(runs))
    print(agreement_table(rows))
    if args.json:
        record = {"header": header, "runs": [[asdict(o), asdict(t)] for o, t in runs]}
        args.json.write_text(json.dumps({**record, "agreement": rows}, indent=1))
    if args.keep is None:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
