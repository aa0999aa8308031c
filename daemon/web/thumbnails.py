"""Before/after thumbnails for the status page, stored once when a revision's outputs are
written.

They come from what cutoutd already holds, never from storage on page load: the output
writer (daemon.delivery) makes them from the pixels it decoded to render the outputs
(daemon.previews), and this observer writes them to a folder in the state directory. At
most `keep` images' thumbnails stay there; the oldest go first.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

from daemon.logs import context
from daemon.models import Item
from daemon.observers import NullObserver

log = logging.getLogger(__name__)
SIDES = ("before", "after")


class Thumbnails(NullObserver):
    """The thumbnail folder, and the pipeline observer that fills it."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder = folder
        self.keep = keep
        self._ids: deque[int] = deque()
        self._lock = threading.Lock()
        self._started = False

    def path(self, item_id: int, side: str) -> Path | None:
        """The thumbnail file, when there is one."""
        file = self.folder / f"{item_id}-{side}.webp"
        return file if side in SIDES and file.is_file() else None

    def start(self) -> None:
        if self.keep <= 0 or self._started:
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = {int(f.name.split("-", 1)[0]) for f in self.folder.glob("*-*.webp")}
        self._ids.extend(sorted(found))
        self._started = True

    # -- PipelineObserver -------------------------------------------------------------------

    def output_written(self, item: Item, before: bytes | None, after: bytes) -> None:
        if not self._started:
            return
        try:
            self.store(item.id, before, after)
        except OSError as exc:  # a thumbnail is a nicety: never fail an image for one
            log.warning(
                "cannot store the thumbnails of %s: %s",
                item.path,
                exc,
                extra=context("thumbnail.error", path=item.path),
            )

    def store(self, item_id: int, before: bytes | None, after: bytes) -> None:
        """Write `<id>-before.webp` (when given) and `<id>-after.webp`, each whole."""
        for side, data in zip(SIDES, (before, after), strict=True):
            target = self.folder / f"{item_id}-{side}.webp"
            if data is None:
                target.unlink(missing_ok=True)  # a reprocess by another engine
                continue
            partial = target.with_suffix(f".{threading.get_ident()}.part")
            partial.write_bytes(data)
            partial.replace(target)
        with self._lock:
            if item_id not in self._ids:
                self._ids.append(item_id)
            while len(self._ids) > self.keep:
                self._remove(self._ids.popleft())

    def _remove(self, item_id: int) -> None:
        for side in SIDES:
            (self.folder / f"{item_id}-{side}.webp").unlink(missing_ok=True)
