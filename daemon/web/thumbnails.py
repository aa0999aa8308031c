"""Before/after thumbnails for the status page, made once when an output is written.

They come from what cutoutd already holds, never from storage on page load: the previews
the local engine made from the images it decoded anyway (EngineJob.previews), stored as
they are; or, when an engine made none (Photoshop), the output just written (and the
input, when it was read through cutoutd), decoded on a background thread at a lower CPU
priority (nice 10) so that the pipeline's worker goes straight on. When that thread falls
behind, thumbnails are skipped rather than queued without bound. At most `keep` images'
thumbnails stay in the folder (the state directory); the oldest go first.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
from collections import deque
from pathlib import Path

from PIL import Image, ImageOps

from daemon.logs import context
from daemon.models import Item
from daemon.observers import NullObserver
from daemon.previews import SIZE, preview

log = logging.getLogger(__name__)
SIDES = ("before", "after")
BACKLOG = 32  # outputs waiting for their thumbnails before new ones are skipped
NICE = 10  # the thread yields the CPU to the pipeline's own work


def thumbnail_bytes(data: bytes, size: int = SIZE) -> bytes:
    """A WebP at most `size` pixels on its longest side, alpha kept, upright."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", (size, size))  # JPEG: decode at a fraction of full size
        image = ImageOps.exif_transpose(opened)
    return preview(image, size)


class Thumbnails(NullObserver):
    """The thumbnail folder, and the pipeline observer that fills it."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder = folder
        self.keep = keep
        self._queue: queue.Queue[tuple[int, bytes | None, bytes] | None] = queue.Queue(BACKLOG)
        self._thread = threading.Thread(target=self._work, name="thumbnails", daemon=True)
        self._ids: deque[int] = deque()
        self._lock = threading.Lock()

    def path(self, item_id: int, side: str) -> Path | None:
        """The thumbnail file, when there is one."""
        file = self.folder / f"{item_id}-{side}.webp"
        return file if side in SIDES and file.is_file() else None

    def start(self) -> None:
        if self.keep <= 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = {int(f.name.split("-", 1)[0]) for f in self.folder.glob("*-*.webp")}
        self._ids.extend(sorted(found))
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(10)

    def wait_idle(self) -> None:
        """Block until every queued thumbnail is made (tests, and `run --once`'s end)."""
        if self._thread.is_alive():
            self._queue.join()

    # -- PipelineObserver -------------------------------------------------------------------

    def output_written(
        self,
        item: Item,
        input_data: bytes | None,
        output_data: bytes,
        previews: tuple[bytes, bytes] | None = None,
    ) -> None:
        if not self._thread.is_alive():
            return
        if previews is not None:  # made by the engine from images it had decoded anyway
            self._store(item.id, previews)
            return
        try:
            self._queue.put_nowait((item.id, input_data, output_data))
        except queue.Full:
            log.debug(
                "thumbnails behind; none for %s",
                item.path,
                extra=context("thumbnail.skipped", path=item.path),
            )

    # -- the thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: this thread alone
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self.make(*job)
            except Exception as exc:  # a thumbnail is a nicety: never stop for one
                log.warning(
                    "cannot make a thumbnail for #%s: %s",
                    job[0] if job else "?",
                    exc,
                    extra=context("thumbnail.error"),
                )
            finally:
                self._queue.task_done()

    def make(self, item_id: int, input_data: bytes | None, output_data: bytes) -> None:
        """Write `<id>-before.webp` (when the input is held) and `<id>-after.webp`."""
        before = thumbnail_bytes(input_data) if input_data is not None else None
        self._store(item_id, (before, thumbnail_bytes(output_data)))

    def _store(self, item_id: int, thumbnails: tuple[bytes | None, bytes]) -> None:
        for side, data in zip(SIDES, thumbnails, strict=True):
            if data is not None:
                target = self.folder / f"{item_id}-{side}.webp"
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
