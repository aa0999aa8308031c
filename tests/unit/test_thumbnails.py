from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from daemon.web.thumbnails import SIZE, Thumbnails, thumbnail_bytes
from tests.helpers import encode, shape_image


def png_with_alpha() -> bytes:
    image = Image.new("RGBA", (800, 400), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (100, 100, 300, 300))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_thumbnails_are_small_and_keep_alpha() -> None:
    before = Image.open(io.BytesIO(thumbnail_bytes(encode(shape_image(size=(1200, 900))[0]))))
    assert before.format == "WEBP" and before.size == (300, 225) and before.mode == "RGB"
    after = Image.open(io.BytesIO(thumbnail_bytes(png_with_alpha())))
    assert after.size == (267, 134) and after.mode == "RGBA" and max(after.size) <= SIZE
    assert after.getpixel((0, 0))[3] == 0 and after.getpixel((60, 60))[3] == 255


def test_bounded_oldest_removed_and_kept_across_restarts(tmp_path: Path) -> None:
    jpeg, png = encode(shape_image(size=(64, 48))[0]), png_with_alpha()
    store = Thumbnails(tmp_path / "thumbs", keep=2)
    store.start()
    try:
        for item_id in (1, 2, 3):
            store.make(item_id, jpeg, png)
        store.make(4, None, png)  # Photoshop: the input is not held, only the "after"
    finally:
        store.close()
    names = sorted(p.name for p in (tmp_path / "thumbs").iterdir())
    assert names == ["3-after.webp", "3-before.webp", "4-after.webp"]
    assert store.path(4, "before") is None and store.path(4, "after") is not None
    assert store.path(3, "../etc") is None

    again = Thumbnails(tmp_path / "thumbs", keep=2)
    again.start()
    try:
        again.make(5, jpeg, png)
    finally:
        again.close()
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == [
        "4-after.webp", "5-after.webp", "5-before.webp",
    ]  # fmt: skip


def test_a_bad_output_is_logged_not_raised(tmp_path: Path) -> None:
    store = Thumbnails(tmp_path / "thumbs", keep=5)
    store.start()

    class Item:
        id, path = 7, "x.jpg"

    try:
        store.output_written(Item(), None, b"not an image")  # type: ignore[arg-type]
        store.output_written(Item(), None, png_with_alpha())  # type: ignore[arg-type]
        store.wait_idle()
    finally:
        store.close()
    assert store.path(7, "after") is not None
