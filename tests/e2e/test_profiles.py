"""Profiles end to end: the real `cutoutd` command, a local folder, the real local model."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

from tests.e2e.conftest import run_cutoutd
from tests.helpers import alpha_iou, write_shape

AMAZON = """
[[profile]]
name = "amazon"
match = ["amazon/**"]
engine = "local"
[[profile.output]]
format = "jpeg"
canvas = "2000x2000"
fill = 0.85
[[profile.output]]
format = "webp"
trim = true
padding = "5%"
folder = "web"
"""


def write_config(tmp_path: Path, root: Path, extra: str, recursive: bool = True) -> Path:
    path = tmp_path / "cutoutd.toml"
    path.write_text(
        f'[source]\nroot = "{root}"\nsettle_seconds = 0\nrecursive = {str(recursive).lower()}\n'
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.sqlite3"}"\n'
        f'[log]\nformat = "json"\nlevel = "INFO"\n{extra}'
    )
    return path


def opened(path: Path) -> Image.Image:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()
        copy = image.copy()
        copy.format = image.format
        return copy


def product_box(picture: Image.Image) -> tuple[int, int, int, int]:
    pixels = np.asarray(picture.convert("RGB")).astype(int)
    visible = np.abs(pixels - 255).sum(axis=2) > 150
    rows, columns = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def test_amazon_profile_beside_the_default_profile(
    tmp_path: Path,
) -> None:
    root = tmp_path / "RemoveBGProcess"
    amazon = {
        name: write_shape(root / "input" / "amazon" / name, size=(480, 360), shape="rectangle",
                          color=color, box=(0.3, 0.2, 0.6, 0.85))
        for name, color in (("shoe.jpg", (30, 60, 200)), ("kids/cap.jpg", (200, 40, 40)))
    }  # fmt: skip
    plain = write_shape(root / "input" / "other" / "mug.jpg", size=(320, 240), color=(20, 150, 40))
    config = write_config(tmp_path, root, AMAZON)

    result = run_cutoutd("--config", str(config), "run", "--once")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("processed 3: 3 succeeded"), result.stdout

    output = root / "output"
    for name, mask in amazon.items():
        stem = name.rsplit(".", 1)[0]
        jpeg = opened(output / "amazon" / f"{stem}.jpg")
        assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", (2000, 2000))
        left, top, right, bottom = product_box(jpeg)
        assert abs(max(right - left, bottom - top) / 2000 - 0.85) <= 0.02, name  # model edges
        assert abs((left + right) / 2 - 1000) <= 20 and abs((top + bottom) / 2 - 1000) <= 20
        assert (np.asarray(jpeg)[:100] == 255).all()  # pure white away from the product
        webp = opened(output / "web" / "amazon" / f"{stem}.webp")
        assert (webp.format, webp.mode) == ("WEBP", "RGBA")
        rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        box_w, box_h = columns[-1] - columns[0] + 1, rows[-1] - rows[0] + 1
        pad = 0.05 * max(box_w, box_h)
        assert (
            abs(webp.size[0] - (box_w + 2 * pad)) <= 12
            and abs(webp.size[1] - (box_h + 2 * pad)) <= 12
        )
        assert (root / "archive" / "amazon" / name).exists()
    assert alpha_iou((output / "other" / "mug.png").read_bytes(), plain) >= 0.9
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*.*")) == [
        "amazon/kids/cap.jpg", "amazon/shoe.jpg", "other/mug.png",
        "web/amazon/kids/cap.webp", "web/amazon/shoe.webp",
    ]  # fmt: skip

    # the ledger records every output before the input is archived
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute(
            "SELECT items.path, outputs.slot, outputs.path, outputs.bytes, outputs.written_at,"
            " items.archived_at FROM outputs JOIN items ON items.id = outputs.item_id"
            " ORDER BY items.path, outputs.slot"
        ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("amazon/kids/cap.jpg", 0, "amazon/kids/cap.jpg"),
        ("amazon/kids/cap.jpg", 1, "web/amazon/kids/cap.webp"),
        ("amazon/shoe.jpg", 0, "amazon/shoe.jpg"),
        ("amazon/shoe.jpg", 1, "web/amazon/shoe.webp"),
        ("other/mug.jpg", 0, "other/mug.png"),
    ]
    for row in rows:
        assert row[3] == (output / row[2]).stat().st_size
        assert row[4] is not None and row[4] <= row[5]

    shown = run_cutoutd(
        "--config", str(config), "ledger", "show", "amazon/shoe.jpg", "--format", "table"
    )
    assert shown.returncode == 0, shown.stderr
    assert "outputs: output/amazon/shoe.jpg, output/web/amazon/shoe.webp" in shown.stdout
    by_output = run_cutoutd(
        "--config",
        str(config),
        "ledger",
        "show",
        "output/web/amazon/shoe.webp",
        "--format",
        "table",
    )
    assert by_output.returncode == 0 and "amazon/shoe.jpg" in by_output.stdout
    as_json = run_cutoutd(
        "--config", str(config), "ledger", "show", "amazon/shoe.jpg", "--format", "json"
    )
    (record,) = json.loads(as_json.stdout)
    assert [o["path"] for o in record["outputs"]] == [
        "output/amazon/shoe.jpg", "output/web/amazon/shoe.webp",
    ]  # fmt: skip


def test_same_stem_rule_holds_for_every_output(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_shape(root / "input" / "amazon" / "a.jpg", color=(200, 30, 30))
    write_shape(root / "input" / "amazon" / "a.png", color=(30, 30, 200))
    config = write_config(tmp_path, root, AMAZON + '[archive]\npolicy = "keep"\n')
    assert run_cutoutd("--config", str(config), "run", "--once").returncode == 0
    names = sorted(
        p.relative_to(root / "output").as_posix() for p in (root / "output").rglob("*.*")
    )
    assert len(names) == 4 and len({n.lower() for n in names}) == 4
    jpegs = [n for n in names if n.endswith(".jpg") and n.startswith("amazon/")]
    webps = [n for n in names if n.endswith(".webp")]
    assert "amazon/a.jpg" in jpegs and len(jpegs) == 2
    assert "web/amazon/a.webp" in webps and len(webps) == 2
    # a second run does nothing; no output is written twice or lost
    again = run_cutoutd("--config", str(config), "run", "--once")
    assert again.stdout.startswith("processed 0:")


def test_profile_config_errors_exit_78_together(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bad = AMAZON.replace("fill = 0.85", "fill = 2")
    bad = bad.replace('"2000x2000"', '"big"').replace('folder = "web"', 'folder = "web"\nshade = 1')
    config = write_config(tmp_path, root, bad, recursive=False)
    result = run_cutoutd("--config", str(config), "check")
    assert result.returncode == 78
    for expected in (
        "profile.amazon.match: 'amazon/**' can never match",
        "profile.amazon.output[1].canvas:",
        "profile.amazon.output[1].fill:",
        "profile.amazon.output[2].shade: unknown key",
    ):
        assert expected in result.stderr, result.stderr
