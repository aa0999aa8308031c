from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from daemon.config import Settings
from daemon.delivery import OutputWriter
from daemon.ledger import Ledger
from daemon.models import EncodedCutout
from daemon.previews import SIZE, cutout_previews
from daemon.profiles import choose_profile
from daemon.storage.local import LocalStorage
from daemon.web.thumbnails import Thumbnails
from tests.helpers import encode, shape_image, write_shape


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


def test_an_input_the_engine_never_saw_gets_its_before_from_the_storage(
    make_settings: Callable[..., Settings], root: Path
) -> None:
    """An encoded result (Photoshop's) carries no input pixels: the writer asks the
    storage for its picture of the input (here a local folder's file) once; a file the
    storage cannot picture leaves the before out and the outputs are written all the same."""
    settings = make_settings()
    storage = LocalStorage(root, settle_seconds=0)
    storage.ensure_layout()
    image, mask = shape_image(size=(640, 480), color=(30, 90, 200))
    write_shape(root / "input" / "shot.jpg", size=(640, 480), color=(30, 90, 200))
    (root / "input" / "odd.jpg").write_bytes(b"Adobe could read it, Pillow cannot")
    ledger = Ledger(settings.ledger.url)
    ledger.migrate()
    ledger.record_changes(storage.key, storage.list_changes(None), "photoshop")
    told: dict[str, tuple[bytes | None, bytes]] = {}
    writer = OutputWriter(
        storage, ledger, fold_case=False, previews=lambda i, b, a: told.update({i.path: (b, a)})
    )
    cutout = Image.fromarray(np.dstack([np.asarray(image), mask.astype("uint8") * 255]))
    result = EncodedCutout(encode(cutout, "PNG"), "Adobe job 1")
    for _ in range(2):
        item = ledger.claim_next()
        assert item is not None
        assert writer.write_all(item, choose_profile(settings, item.path), result)
    ledger.close()

    before, after = told["shot.jpg"]
    assert before is not None and opened(after).mode == "RGBA"
    small = opened(before)
    assert small.size == (320, 240) and small.convert("RGB").getpixel((5, 5)) != (0, 0, 0)
    assert abs(small.convert("RGB").getpixel((160, 120))[2] - 200) < 12  # the input's shape
    assert told["odd.jpg"][0] is None
    assert sorted(p.name for p in (root / "output").iterdir()) == ["odd.png", "shot.png"]
