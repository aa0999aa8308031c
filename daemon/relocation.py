"""Moving inputs after their outcome: to archive/ or failed/, or deleting them. Last, and
only while the input is still the revision processed; a move interrupted by a crash or by
transient storage trouble is finished later (`relocate_pending`).

Moves are batched: an input whose outcome is recorded joins a queue, and whichever worker
finds no flush in progress waits `BATCH_LINGER` (Dropbox only: a local folder has no
batches to fill) for others finishing at the same moment,
then sends everything queued (with the ones that finished while the previous batch was
out) as one `relocate_many` per area (Dropbox: `files/move_batch_v2`),
which keeps writes to the namespace few when many images finish together."""

from __future__ import annotations

import logging
import threading

from daemon.errors import CutoutdError, ItemGoneError, TransientError
from daemon.ledger_port import LedgerPort
from daemon.logs import context
from daemon.models import Area, Item
from daemon.storage.base import Storage

log = logging.getLogger(__name__)
RELOCATE_FOR_POLICY = {"move": "archive", "delete": "delete", "keep": None}
BATCH_LINGER = 0.2  # seconds a flush waits for more finished images before it sends


class Relocator:
    """The pipeline's last step over the storage port; targets are `archive`, `failed`,
    `delete` or None (leave the input where it is)."""

    def __init__(
        self,
        storage: Storage,
        ledger: LedgerPort,
        stop: threading.Event,
        linger: float = BATCH_LINGER,
    ) -> None:
        self.storage = storage
        self.ledger = ledger
        self.stop = stop
        self.linger = linger
        self._queue: dict[int, tuple[Item, str]] = {}
        self._queue_lock = threading.Lock()
        self._flushing = threading.Lock()

    def relocate(self, item: Item, target: str | None) -> None:
        """Queue the move and send the queue, unless a flush in progress will take it."""
        if target is None:
            return
        with self._queue_lock:
            self._queue[item.id] = (item, target)
        self._flush(wait=False)

    def relocate_pending(self, wait: bool = True) -> None:
        """Finish moves interrupted by a crash or by transient storage trouble. Without
        `wait`, a flush in progress (perhaps waiting out a rate limit) takes them over."""
        with self._queue_lock:
            for item, target in self.ledger.pending_relocations():
                self._queue.setdefault(item.id, (item, target))
        self._flush(wait=wait)

    def _flush(self, wait: bool) -> None:
        while True:
            if not self._flushing.acquire(blocking=wait):
                return  # the flush in progress picks up what was queued
            try:
                with self._queue_lock:
                    idle = not self._queue
                if not idle:
                    self.stop.wait(self.linger)  # let images finishing now join this batch
                with self._queue_lock:
                    batch, self._queue = list(self._queue.values()), {}
                self._send(batch)
            finally:
                self._flushing.release()
            with self._queue_lock:
                if not self._queue:
                    return
            wait = False

    def _send(self, batch: list[tuple[Item, str]]) -> None:
        moves: dict[Area, list[Item]] = {}
        for item, target in batch:
            if self._ready_to_move(item, target):
                moves.setdefault(Area(target), []).append(item)
        for area, items in moves.items():
            try:
                results = self.storage.relocate_many([i.as_file() for i in items], area)
            except (TransientError, CutoutdError) as exc:
                results = [exc] * len(items)
            for item, result in zip(items, results, strict=True):
                self._record(item, area, result)

    def _ready_to_move(self, item: Item, target: str) -> bool:
        """Checks before a move; deletes are done here. True when `item` should move."""
        try:
            current = self.storage.current_rev(item.path)
            if current is None and target != "delete" and self._found_moved(item, Area(target)):
                return False
            if current != item.rev:
                self.ledger.clear_relocation(item, "input changed or gone; left in place")
                return False
            if target != "delete":
                return True
            self.storage.delete(item.as_file())
            self.ledger.mark_relocated(item, None, "input_deleted")
        except ItemGoneError as exc:
            self.ledger.clear_relocation(item, str(exc))
        except CutoutdError as exc:
            self._not_yet(item, exc)
        return False

    def _record(self, item: Item, area: Area, result: str | Exception) -> None:
        if isinstance(result, ItemGoneError):  # maybe a try whose answer was lost moved it
            try:
                if self._found_moved(item, area):
                    return
            except CutoutdError as exc:
                self._not_yet(item, exc)
                return
            self.ledger.clear_relocation(item, str(result))
        elif isinstance(result, Exception):
            self._not_yet(item, result)
        else:
            self.ledger.mark_relocated(item, f"{area.value}/{result}", f"moved_to_{area.value}")
            log.info(
                "moved %s to %s/%s",
                item.path,
                area.value,
                result,
                extra=context("item.archived", path=item.path, to=f"{area.value}/{result}"),
            )

    def _not_yet(self, item: Item, error: Exception) -> None:
        log.warning(
            "cannot move %s yet: %s",
            item.path,
            error,
            extra=context("item.relocate_retry", path=item.path),
        )

    def _found_moved(self, item: Item, area: Area) -> bool:
        """A move that went through just before a crash: record where it went."""
        moved = self.storage.find_relocated(item.as_file(), area)
        if moved is None:
            return False
        self.ledger.mark_relocated(item, f"{area.value}/{moved}", f"moved_to_{area.value}")
        log.info(
            "found %s already moved to %s/%s",
            item.path,
            area.value,
            moved,
            extra=context("item.archived", path=item.path, to=f"{area.value}/{moved}"),
        )
        return True
