"""Make the README's "Recipes for marketplaces" pictures with the real `cutoutd` command.

    .venv/bin/python scripts/make_recipe_pictures.py [SAMPLE]

Copies a sample shot (default examples/samples/bottle.jpg) into a scratch folder, runs
`cutoutd run --once` with the three recipes of the README as the outputs of one profile and
the local engine, and copies the results to docs/recipes/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "recipes"

RECIPES = """
[[profile]]
name = "catalog"
match = ["**"]

[[profile.output]]   # Amazon main image
format = "jpeg"
quality = 90
background_color = "#ffffff"
canvas = "2000x2000"
fill = 0.85
folder = "amazon"

[[profile.output]]   # Shopify square
format = "jpeg"
background_color = "#f4f4f4"
canvas = "2048x2048"
fill = 0.8
align = "bottom"
folder = "shopify"

[[profile.output]]   # transparent web asset
format = "webp"
quality = 85
trim = true
padding = "5%"
max_side = 1200
folder = "web"
"""


def main() -> None:
    sample = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "examples/samples/bottle.jpg"
    cutoutd = Path(sys.executable).parent / "cutoutd"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "RemoveBGProcess"
        (root / "input").mkdir(parents=True)
        shutil.copy(sample, root / "input" / sample.name)
        config = Path(scratch) / "cutoutd.toml"
        config.write_text(
            f'[source]\nroot = "{root}"\nsettle_seconds = 0\n[log]\nlevel = "WARNING"\n{RECIPES}'
        )
        subprocess.run([str(cutoutd), "--config", str(config), "run", "--once"], check=True)
        TARGET.mkdir(parents=True, exist_ok=True)
        stem = sample.stem
        for folder, extension in (("amazon", "jpg"), ("shopify", "jpg"), ("web", "webp")):
            made = root / "output" / folder / f"{stem}.{extension}"
            shutil.copy(made, TARGET / f"{stem}-{folder}.{extension}")
            print(TARGET / f"{stem}-{folder}.{extension}", made.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
