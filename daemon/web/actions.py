"""Retry and Reprocess from the page: the CLI's own requeue operations (daemon.ledger.requeue),
recorded in the ledger with the actor `web:<address>`."""

from __future__ import annotations

from collections.abc import Callable

from daemon.ledger import Ledger
from daemon.ledger.requeue import Requeued, RequeueError, Requeuer
from daemon.models import Item, ItemStatus
from daemon.storage.base import Storage
from daemon.web.app import ActionRefused


class RequeueActions:
    def __init__(self, ledger: Ledger, storage: Storage, wake: Callable[[], None]) -> None:
        self.ledger = ledger
        self.storage = storage
        self.wake = wake  # the daemon's workers look for work at once

    def retry(self, item_id: int, actor: str) -> str:
        return self._requeue(item_id, actor, ItemStatus.FAILED, Requeuer.requeue_failed)

    def reprocess(self, item_id: int, actor: str) -> str:
        return self._requeue(item_id, actor, ItemStatus.SUCCEEDED, Requeuer.reprocess)

    def _requeue(
        self,
        item_id: int,
        actor: str,
        status: ItemStatus,
        operation: Callable[[Requeuer, Item], Requeued],
    ) -> str:
        requeuer = Requeuer(self.ledger, self.storage, actor)  # shares the daemon's ledger
        item = requeuer.latest(str(item_id), status)
        try:
            done = operation(requeuer, item)
        except RequeueError as exc:
            raise ActionRefused(str(exc)) from None
        self.wake()
        moved = f", input moved back from {done.restored_from}" if done.restored_from else ""
        return f"{item.path} (#{item.id}) requeued{moved}"
