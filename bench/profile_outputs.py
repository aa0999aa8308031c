"""The CPU that a marketplace profile adds per image, against the local engine's own.

    .venv/bin/python bench/profile_outputs.py [--images 12] [--side 2000]

Generates `--images` synthetic `--side` px product shots (bench/inputs.py's
`product_shot`, JPEG q90). For each image, one at a time on one thread (the local engine
with one single-threaded model run, so process CPU time is this image's alone):

- `engine`: `LocalEngine.cut_out` (decode, model, mask at full size) plus the plain cutout
  (the default profile's transparent PNG): the local engine's own CPU per image, what it
  cost before profiles;
- `plain`: rendering that plain PNG alone;
- `recipe`: rendering the Amazon main image (2000x2000 JPEG on white, fill 0.85) plus a
  trimmed WebP with 5 % padding, from the same cutout.

`extra = recipe - plain` is what a profile with those two outputs costs over the plain
cutout; the target is `extra <= 15 %` of `engine`. The three renderings alternate within
each image, so that load from other processes hits them alike; figures are medians.
CPU is `resource.getrusage(RUSAGE_SELF)` user + system time.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inputs import job_for, product_shot
from daemon.engines.local import LocalEngine
from daemon.models import Cutout, OutputFormat, OutputSpec, Padding
from daemon.rendering import render

PLAIN = (OutputSpec(),)
RECIPE = (
    OutputSpec(format=OutputFormat.JPEG, canvas=(2000, 2000), fill=0.85),
    OutputSpec(format=OutputFormat.WEBP, trim=True, padding=Padding(5, percent=True)),
)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(step: Callable[[], Any]) -> tuple[float, Any]:
    started = cpu()
    result = step()
    return cpu() - started, result


def render_all(cutout: Cutout, specs: tuple[OutputSpec, ...]) -> int:
    return sum(len(render(cutout, spec)) for spec in specs)


def run(images: int, side: int) -> dict[str, Any]:
    engine = LocalEngine(workers=1, model_runs=1, threads=1, idle_release=None)
    engine.start()
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(images + 1):
            image, _ = product_shot(seed, side)
            path = Path(folder) / f"{seed:03d}.jpg"
            image.save(path, quality=90)
            cut, cutout = measured(lambda path=path: engine.cut_out(job_for(path)))
            plain, _ = measured(lambda cutout=cutout: render_all(cutout, PLAIN))
            recipe, size = measured(lambda cutout=cutout: render_all(cutout, RECIPE))
            plain_again, _ = measured(lambda cutout=cutout: render_all(cutout, PLAIN))
            plain = (plain + plain_again) / 2
            if seed:  # the first image warms up
                rows.append({"cut_out": cut, "plain": plain, "recipe": recipe, "bytes": size})
    engine.close()
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    own = median["cut_out"] + median["plain"]
    extra = median["recipe"] - median["plain"]
    return {
        "images": images,
        "side": side,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "ms": {
            "engine (cut_out + plain PNG)": round(1000 * own, 1),
            "cut_out": round(1000 * median["cut_out"], 1),
            "plain PNG": round(1000 * median["plain"], 1),
            "recipe (JPEG 2000 + WebP)": round(1000 * median["recipe"], 1),
            "extra (recipe - plain)": round(1000 * extra, 1),
        },
        "extra_share_of_engine": round(extra / own, 3),
        "recipe_share_of_engine": round(median["recipe"] / own, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--side", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(run(args.images, args.side), indent=2))


if __name__ == "__main__":
    main()
