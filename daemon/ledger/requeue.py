"""The operator's requeue commands: retry a failed revision, reprocess a succeeded one.

Both re-activate the OLD row instead of creating a second one:

1. Compare-and-set it to `pending`, held back (`next_attempt_at` HOLD_SECONDS ahead) so
   no worker claims it while its input is away; attempts, error, remote job, finish and
   relocation fields are reset, and a `retry_requested` / `reprocess_requested` event
   names the operator (`cli:<user>@<host>`).
2. Move the input back into `input/` from `archive/` or `failed/` (Storage.restore). An
   input still in `input/` (archive policy `keep`, or a move that never happened) stays.
3. Release the hold (`input_restored`): the daemon picks the row up on its next pass.

A local folder keeps a moved file's rev (rev = hash(content hash, mtime), and a rename
keeps the mtime), so the daemon's next scan finds (path, rev) already in the ledger and
creates no row: the old row is the one processed. Where the move gives the file a new
rev (a Dropbox move does; so does editing the file in `failed/` before retrying), the
ledger does not rewrite a row's (path, rev): the old row is closed as `skipped`
(`superseded`), and the daemon's next discovery records the restored file as a new
revision and processes it. Since the old row no longer counts as succeeded, content
dedupe does not skip that new revision as a duplicate of it.

If the move fails, the row goes back to its previous state (`requeue_abandoned`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import aliased

from daemon.errors import AuthError, CutoutdError, LostClaimError
from daemon.ledger.audit import AuditArgumentError, LedgerAudit
from daemon.ledger.audit_sql import window
from daemon.ledger.queries import to_item
from daemon.ledger.schema import ItemRow
from daemon.ledger.store import Ledger
from daemon.models import Area, Item, ItemStatus
from daemon.storage.base import Storage

HOLD_SECONDS = 600.0
EVENTS = {ItemStatus.FAILED: "retry_requested", ItemStatus.SUCCEEDED: "reprocess_requested"}
ABANDONED = "requeue_abandoned"
# The only events that take a finished revision out of its outcome, or put it back with its
# old finish time (daemon.ledger.dashboard caches counts of old finishes until one appears).
REOPENING_EVENTS = (*EVENTS.values(), ABANDONED)


class RequeueError(CutoutdError):
    """The input cannot be put back; nothing changed (or the row was put back as it was)."""


@dataclass(frozen=True, slots=True)
class Requeued:
    item: Item  # the row as it now stands
    previous: ItemStatus
    restored_from: str | None  # `failed/x.jpg` when the input was moved back
    superseded: bool  # the restored input is a new revision: the daemon records it anew


class Requeuer:
    """Puts inputs back in `input/` and their revisions back in the queue."""

    def __init__(self, ledger: Ledger, storage: Storage, actor: str) -> None:
        self.ledger = ledger
        self.storage = storage
        self.actor = actor
        self.audit = LedgerAudit(ledger)

    def close(self) -> None:
        self.ledger.close()

    # -- which revision -------------------------------------------------------------------

    def latest(self, ref: str, status: ItemStatus) -> Item:
        """The newest revision of PATH (or revision ID, which must be the newest of its
        file); AuditArgumentError unless it is `status`."""
        with self.ledger.transaction() as connection:
            revisions = self.audit.resolve(connection, ref)
            newest = connection.execute(
                select(ItemRow)
                .where(ItemRow.path_lower == revisions[-1].path_lower)
                .order_by(ItemRow.id.desc())
                .limit(1)
            ).one()
        item, latest = revisions[-1], to_item(newest)
        if latest.id != item.id:
            raise AuditArgumentError(
                f"#{item.id} is not the newest revision of {item.path}: #{latest.id} is "
                f"{latest.status}"
            )
        if item.status != status:
            hint = {
                ItemStatus.SUCCEEDED: "; use `cutoutd reprocess`",
                ItemStatus.FAILED: "; use `cutoutd retry`",
            }.get(item.status, "")
            raise AuditArgumentError(
                f"{item.path} (#{item.id}) is {item.status}, not {status}{hint}"
            )
        return item

    def failed_revisions(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[Item]:
        """Failed revisions discovered in [since, until) that are the newest of their file."""
        newer = aliased(ItemRow)
        query = (
            select(ItemRow)
            .where(ItemRow.status == ItemStatus.FAILED)
            .where(*window(ItemRow.discovered_at, since, until))
            .where(~exists().where(newer.path_lower == ItemRow.path_lower, newer.id > ItemRow.id))
            .order_by(ItemRow.id)
        )
        with self.ledger.transaction() as connection:
            return [to_item(row) for row in connection.execute(query)]

    # -- requeue --------------------------------------------------------------------------

    def requeue_failed(self, item: Item) -> Requeued:
        """failed -> pending, moving the input back from `failed/`."""
        return self._requeue(item, ItemStatus.FAILED)

    def reprocess(self, item: Item) -> Requeued:
        """succeeded -> pending, moving the input back from `archive/`: a new engine run."""
        return self._requeue(item, ItemStatus.SUCCEEDED)

    def _locate(self, item: Item) -> tuple[Area, str]:
        """Where the input of this revision is now."""
        current = self.storage.current_rev(item.path)
        if current == item.rev:
            return Area.INPUT, item.path
        area_name, _, path = (item.archived_path or "").partition("/")
        if area_name not in (Area.ARCHIVE, Area.FAILED) or not path:
            what = "gone" if current is None else "replaced by a newer file"
            raise RequeueError(
                f"input/{item.path} is {what} and no copy was moved aside "
                "(archive policy delete, or moved by hand): drop the file into input/ again"
            )
        if current is not None:
            raise RequeueError(
                f"input/{item.path} holds another file now; move it away first, then retry"
            )
        if not self.storage.exists(Area(area_name), path):
            raise RequeueError(f"{item.archived_path} is no longer there")
        return Area(area_name), path

    def _requeue(self, item: Item, expected: ItemStatus) -> Requeued:
        area, path = self._locate(item)
        moving = area is not Area.INPUT
        now = self.ledger.clock()
        reset: dict[str, Any] = {
            "attempts": 0,
            "next_attempt_at": now + timedelta(seconds=HOLD_SECONDS) if moving else None,
            "last_error": None,
            "job_id": None,
            "status_url": None,
            "relocate_to": None,
            "claimed_by": None,
            "lease_expires_at": None,
            "started_at": None,
            "finished_at": None,
        }
        source = f"{area.value}/{path}"
        previous = {"previous_error": item.last_error} if item.last_error else {}
        held = self._transition(
            item, expected, ItemStatus.PENDING, EVENTS[expected], reset, input=source, **previous
        )
        if not moving:
            return Requeued(held, expected, None, False)
        try:
            restored = self.storage.restore(area, path, item.path)
        except CutoutdError as exc:
            self._put_back(item, expected, str(exc))
            if isinstance(exc, AuthError):
                raise
            raise RequeueError(f"cannot move {source} back into input/: {exc}") from exc
        return self._release(item, expected, source, restored)

    def _release(self, item: Item, expected: ItemStatus, source: str, restored: str) -> Requeued:
        rev = self.storage.current_rev(restored)
        moved = {"archived_path": None, "archived_at": None, "next_attempt_at": None}
        detail = {"source": source, "path": restored, "rev": rev}
        if restored == item.path and rev == item.rev:
            done = self._transition(
                item, ItemStatus.PENDING, ItemStatus.PENDING, "input_restored", moved, **detail
            )
            return Requeued(done, expected, source, False)
        reason = (
            f"superseded: input/{restored} came back as a new revision (rev {rev}); "
            "the daemon records and processes it as one"
            if rev is not None
            else f"superseded: input/{restored} vanished right after it was moved back"
        )
        closed = {**moved, "last_error": reason, "finished_at": self.ledger.clock()}
        done = self._transition(
            item, ItemStatus.PENDING, ItemStatus.SKIPPED, "superseded", closed, **detail
        )
        return Requeued(done, expected, source, True)

    def _put_back(self, item: Item, previous: ItemStatus, reason: str) -> None:
        values = {
            "attempts": item.attempts,
            "next_attempt_at": None,
            "last_error": item.last_error,
            "job_id": item.job_id,
            "status_url": item.status_url,
            "started_at": item.started_at,
            "finished_at": item.finished_at,
        }
        self._transition(item, ItemStatus.PENDING, previous, ABANDONED, values, reason=reason)

    def _transition(
        self,
        item: Item,
        expected: ItemStatus,
        target: ItemStatus,
        event: str,
        values: dict[str, Any],
        **detail: Any,
    ) -> Item:
        try:
            return self.ledger.transition(
                item.id, expected, target, event, values, actor=self.actor, **detail
            )
        except LostClaimError:
            raise RequeueError(
                f"{item.path} (#{item.id}) changed state meanwhile; look again with "
                "`cutoutd ledger show`"
            ) from None
