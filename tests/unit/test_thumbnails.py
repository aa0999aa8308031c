from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from daemon.previews import SIZE, cutout_previews
from daemon.web.thumbnails import Thumbnails
from tests.helpers import shape_image


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_previews_are_small_and_the_after_carries_the_cutout() -> None:
    image, mask = shape_image(size=(1200, 900))
    alpha = Image.fromarray(mask.astype("uint8") * 255)
    before, after = cutout_previews(image, alpha, with_before=True)
    assert before is not None
    small, cut = opened(before), opened(after)
    assert (small.format, small.size, small.mode) == ("WEBP", (300, 225), "RGB")
    assert (cut.size, cut.mode) == ((300, 225), "RGBA") and max(cut.size) <= SIZE
    assert cut.getpixel((2, 2))[3] == 0 and cut.getpixel((150, 112))[3] == 255
    none, _ = cutout_previews(image, alpha, with_before=False)
    assert none is None  # Photoshop: the engine never saw the input


def test_bounded_oldest_removed_and_kept_across_restarts(tmp_path: Path) -> None:
    store = Thumbnails(tmp_path / "thumbs", keep=2)
    store.start()
    for item_id in (1, 2, 3):
        store.store(item_id, b"before", b"after")
    store.store(4, None, b"after")
    names = sorted(p.name for p in (tmp_path / "thumbs").iterdir())
    assert names == ["3-after.webp", "3-before.webp", "4-after.webp"]
    assert store.path(4, "before") is None and store.path(4, "after") is not None
    assert store.path(3, "../etc") is None

    again = Thumbnails(tmp_path / "thumbs", keep=2)
    again.start()
    again.store(5, b"before", b"after")
    again.store(4, None, b"after again")  # a reprocess keeps its place
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == [
        "4-after.webp", "5-after.webp", "5-before.webp",
    ]  # fmt: skip
    assert (tmp_path / "thumbs" / "4-after.webp").read_bytes() == b"after again"


def test_nothing_is_stored_when_off_or_before_start(tmp_path: Path) -> None:
    class Item:
        id, path = 7, "x.jpg"

    off = Thumbnails(tmp_path / "off", keep=0)
    off.start()
    off.output_written(Item(), b"b", b"a")  # type: ignore[arg-type]
    assert not (tmp_path / "off").exists()
