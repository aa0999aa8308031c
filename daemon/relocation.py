"""Moving inputs after their outcome: to archive/ or failed/, or deleting them. Last, and
only while the input is still the revision processed; a move interrupted by a crash or by
transient storage trouble is finished later (`relocate_pending`)."""

from __future__ import annotations

import logging
import threading

from daemon.errors import ItemGoneError, TransientError
from daemon.ledger import Ledger
from daemon.logs import context
from daemon.models import Area, Item
from daemon.storage.base import Storage

log = logging.getLogger(__name__)
RELOCATE_FOR_POLICY = {"move": "archive", "delete": "delete", "keep": None}


class Relocator:
    """The pipeline's last step over the storage port; targets are `archive`, `failed`,
    `delete` or None (leave the input where it is)."""

    def __init__(self, storage: Storage, ledger: Ledger, stop: threading.Event) -> None:
        self.storage = storage
        self.ledger = ledger
        self.stop = stop

    def relocate(self, item: Item, target: str | None) -> None:
        """Archive (or delete, or move to failed/) the input, last, and only if the input's
        current rev is still the one processed. Transient trouble leaves it for later."""
        if target is None:
            return
        try:
            current = self.storage.current_rev(item.path)
            if current is None and target != "delete" and self._found_moved(item, Area(target)):
                return
            if current != item.rev:
                self.ledger.clear_relocation(item.id, "input changed or gone; left in place")
                return
            file = item.as_file()
            if target == "delete":
                self.storage.delete(file)
                self.ledger.mark_relocated(item.id, None, "input_deleted")
                return
            area = Area(target)
            moved = self.storage.relocate(file, area)
            self.ledger.mark_relocated(item.id, f"{area.value}/{moved}", f"moved_to_{area.value}")
            log.info(
                "moved %s to %s/%s",
                item.path,
                area.value,
                moved,
                extra=context("item.archived", path=item.path, to=f"{area.value}/{moved}"),
            )
        except ItemGoneError as exc:
            self.ledger.clear_relocation(item.id, str(exc))
        except TransientError as exc:
            log.warning(
                "cannot move %s yet: %s",
                item.path,
                exc,
                extra=context("item.relocate_retry", path=item.path),
            )

    def _found_moved(self, item: Item, area: Area) -> bool:
        """A move that went through just before a crash: record where it went."""
        moved = self.storage.find_relocated(item.as_file(), area)
        if moved is None:
            return False
        self.ledger.mark_relocated(item.id, f"{area.value}/{moved}", f"moved_to_{area.value}")
        log.info(
            "found %s already moved to %s/%s",
            item.path,
            area.value,
            moved,
            extra=context("item.archived", path=item.path, to=f"{area.value}/{moved}"),
        )
        return True

    def relocate_pending(self) -> None:
        """Finish moves interrupted by a crash or by transient storage trouble."""
        for item, target in self.ledger.pending_relocations():
            if self.stop.is_set():
                return
            self.relocate(item, target)
