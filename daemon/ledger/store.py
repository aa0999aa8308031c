"""The ledger's write side: record discoveries with their cursor, claim, and recover.

Transitions (daemon.ledger.outcomes) are compare-and-sets fenced on the claim's token;
claims, fencing and the database clock: see daemon.ledger.claims; nodes and leases:
daemon.ledger.nodes.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, exc, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from daemon.errors import CursorMovedError, SchemaMismatchError
from daemon.ledger.claims import (
    CLAIM_ATTEMPTS,
    claim_statement,
    database_now,
    fresh_token,
    is_postgresql,
    later,
    move_fence,
)
from daemon.ledger.database import migrate
from daemon.ledger.nodes import NodeLedger
from daemon.ledger.outcomes import RELEASED
from daemon.ledger.queries import Clock, to_item, utcnow
from daemon.ledger.schema import CursorRow, ItemRow, NotificationRow
from daemon.models import ChangeBatch, DeletedEntry, Item, ItemStatus, RemoteFile

UNSET: Any = object()  # `record_changes(since=...)` not given: store the cursor unchecked


def default_ledger_url(source_kind: str, root: str) -> str:
    """Where the ledger lives when `[ledger] url` is not set.

    Under systemd, `$STATE_DIRECTORY/ledger.sqlite3`; otherwise, for a local folder,
    `<root>/.cutoutd/ledger.sqlite3` (hidden, so never taken for an input), and for
    Dropbox `$XDG_STATE_HOME/cutoutd/ledger.sqlite3` (~/.local/state by default).
    """
    return f"sqlite:///{default_state_directory(source_kind, root) / 'ledger.sqlite3'}"


def default_state_directory(source_kind: str, root: str) -> Path:
    """`$STATE_DIRECTORY` under systemd; else `<root>/.cutoutd` for a local folder, and
    `$XDG_STATE_HOME/cutoutd` for Dropbox."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    if source_kind == "local":
        return Path(root).expanduser().resolve() / ".cutoutd"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "cutoutd"


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Ledger(NodeLedger):
    """Durable state of every input revision. Safe to share between threads.

    `dedupe`: never two claims at once on one content hash (`[source] dedupe = "content"`).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utcnow,
        node_id: str | None = None,
        lease_seconds: float = 600.0,
        dedupe: bool = False,
        pool_size: int | None = None,
    ) -> None:
        super().__init__(
            url,
            clock=clock,
            node_id=node_id or default_node_id(),
            lease_seconds=lease_seconds,
            writer=True,
            pool_size=pool_size,
        )
        self.dedupe = dedupe

    def migrate(self) -> bool:
        return migrate(self.engine)

    # -- discovery ------------------------------------------------------------------------

    def get_cursor(self, storage_key: str) -> str | None:
        with self.transaction() as connection:
            return connection.scalar(
                select(CursorRow.cursor).where(CursorRow.storage_key == storage_key)
            )

    def record_changes(
        self, storage_key: str, batch: ChangeBatch, engine: str, *, since: str | None = UNSET
    ) -> tuple[int, int]:
        """Insert new revisions and advance the cursor in one transaction.

        Returns (new revisions, pending revisions skipped because their file was deleted).
        Revisions already known are ignored, so replaying a page after a reset is safe.
        `since`: the cursor this page was listed from (None: the first listing). The cursor
        moves only if it is still that one (compare-and-set); if another node moved it
        first, the whole page is rolled back (CursorMovedError), so a stale page's deletes
        never skip the newer revisions that node recorded.
        """
        added = deleted = 0
        with self.transaction() as connection:
            for change in batch.changes:
                if isinstance(change, DeletedEntry):
                    deleted += self._skip_deleted(connection, change.path_lower)
                elif self._insert_file(connection, change, engine):
                    added += 1
            self._store_cursor(connection, storage_key, batch.cursor, since)
        return added, deleted

    def _insert_file(self, connection: Connection, file: RemoteFile, engine: str) -> bool:
        """Insert a pending revision unless (path_lower, rev) is known; race-safe on both
        backends (ON CONFLICT DO NOTHING), so several machines may list at once."""
        dialect_insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
        statement = (
            dialect_insert(ItemRow)
            .values(
                path=file.path,
                path_lower=file.path_lower,
                rev=file.rev,
                content_hash=file.content_hash,
                size=file.size,
                status=ItemStatus.PENDING,
                attempts=0,
                engine=engine,
                discovered_at=self.clock(),
            )
            .on_conflict_do_nothing(index_elements=["path_lower", "rev"])
            .returning(ItemRow.id)
        )
        item_id = connection.scalar(statement)
        if item_id is None:
            return False
        self._event(
            connection,
            item_id,
            "discovered",
            to_status=ItemStatus.PENDING,
            size=file.size,
            content_hash=file.content_hash,
        )
        return True

    def _skip_deleted(self, connection: Connection, path_lower: str) -> int:
        ids = connection.scalars(
            select(ItemRow.id).where(
                (ItemRow.path_lower == path_lower)
                | ItemRow.path_lower.startswith(path_lower + "/", autoescape=True),
                ItemRow.status == ItemStatus.PENDING,
            )
        ).all()
        for item_id in ids:
            self._transition(
                connection,
                item_id,
                ItemStatus.PENDING,
                ItemStatus.SKIPPED,
                "skipped",
                {"last_error": "deleted before processing", "finished_at": self.clock()},
                reason="deleted before processing",
            )
        return len(ids)

    def _store_cursor(
        self, connection: Connection, storage_key: str, cursor: str, since: str | None
    ) -> None:
        values = {"cursor": cursor, "updated_at": self.clock()}
        dialect_insert = pg_insert if is_postgresql(connection) else sqlite_insert
        first = dialect_insert(CursorRow).values(storage_key=storage_key, **values)
        if since is UNSET:  # unchecked: the last writer wins (one node, or the operator)
            connection.execute(
                first.on_conflict_do_update(index_elements=["storage_key"], set_=values)
            )
            return
        if since is None:  # the first cursor: two nodes inserting it race; one wins
            stored = connection.scalar(
                first.on_conflict_do_nothing(index_elements=["storage_key"]).returning(
                    CursorRow.storage_key
                )
            )
        else:
            stored = connection.scalar(
                update(CursorRow)
                .where(CursorRow.storage_key == storage_key, CursorRow.cursor == since)
                .values(**values)
                .returning(CursorRow.storage_key)
            )
        if stored is None:
            raise CursorMovedError(
                f"another node moved the cursor of {storage_key} first; this page was rolled back"
            )

    def reset_cursor(self, storage_key: str) -> None:
        with self.transaction() as connection:
            connection.execute(delete(CursorRow).where(CursorRow.storage_key == storage_key))

    # -- claims -------------------------------------------------------------------------

    def claim_next(self) -> Item | None:
        """Take the oldest due pending revision: one statement (see daemon.ledger.claims),
        with a fresh fencing token. None when nothing is due. SchemaMismatchError while the
        schema is not the one this code needs."""
        if self.schema_problem is not None:
            raise SchemaMismatchError(self.schema_problem)
        for _ in range(CLAIM_ATTEMPTS):
            try:
                with self.transaction() as connection:
                    statement = claim_statement(
                        connection,
                        node_id=self.node_id,
                        token=fresh_token(),
                        now=database_now(connection, self.clock),
                        lease=self.lease,
                        dedupe=self.dedupe,
                        started_at=self.clock(),
                    )
                    row = connection.execute(statement).first()
                    if row is None:
                        return None
                    self._event(
                        connection,
                        row.id,
                        "claimed",
                        from_status=ItemStatus.PENDING,
                        to_status=ItemStatus.PROCESSING,
                    )
                    return to_item(row)
            except exc.IntegrityError:
                continue  # another claim on the same input (or content) won: next row
        return None

    def recover_expired(self) -> list[Item]:
        """Put back `processing` revisions whose lease ran out (their node stopped beating:
        dead, stopped, or cut off), with a `recovered` event naming that node. Every node
        runs this on every pass; remote job ids are kept, so the taker resumes the job."""
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            expired = or_(ItemRow.lease_expires_at.is_(None), ItemRow.lease_expires_at < now)
            return self._recover(connection, expired, "lease expired")

    def recover_at_start(self) -> list[Item]:
        """At start: what `recover_expired` finds, and claims this node's name held before
        it started (an earlier run of it died; a live one would have been refused at
        registration). A SQLite ledger belongs to one machine: there every claim left is
        from a process that is gone, as before several nodes could share a ledger."""
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            if is_postgresql(connection):
                left = or_(
                    ItemRow.lease_expires_at.is_(None),
                    ItemRow.lease_expires_at < now,
                    ItemRow.claimed_by == self.node_id,
                )
                moves = ItemRow.move_claimed_by == self.node_id
            else:
                left = ItemRow.id.is_not(None)
                moves = ItemRow.move_claimed_by.is_not(None)
            connection.execute(
                update(ItemRow)
                .where(moves)
                .values(move_claimed_by=None, move_token=None, move_lease_expires_at=None)
            )
            return self._recover(connection, left, "node restarted")

    def _recover(
        self, connection: Connection, condition: ColumnElement[bool], reason: str
    ) -> list[Item]:
        query = select(ItemRow).where(ItemRow.status == ItemStatus.PROCESSING, condition)
        if is_postgresql(connection):
            query = query.with_for_update(skip_locked=True)
        rows = connection.execute(query.order_by(ItemRow.id)).all()
        for row in rows:
            self._transition(
                connection,
                row.id,
                ItemStatus.PROCESSING,
                ItemStatus.PENDING,
                "recovered",
                RELEASED,
                fence=[ItemRow.claim_token == row.claim_token]
                if row.claim_token is not None
                else [],
                node=row.claimed_by,
                reason=reason,
            )
        return [to_item(row) for row in rows]

    # -- archive moves: claimed like items, fenced on the move token -----------------------

    def claim_relocations(self) -> list[tuple[Item, str]]:
        """The moves still owed (a crash, transient storage trouble): this node's own, and
        those no live node holds, taken with a fresh move token (`move_recovered` events
        name the node they were taken from)."""
        token = fresh_token()
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            owed = ItemRow.relocate_to.is_not(None)
            free = or_(
                ItemRow.move_claimed_by.is_(None),
                ItemRow.move_token.is_(None),
                ItemRow.move_lease_expires_at.is_(None),
                ItemRow.move_lease_expires_at < now,
            )
            others = or_(ItemRow.move_claimed_by.is_(None), ItemRow.move_claimed_by != self.node_id)
            query = select(ItemRow.id, ItemRow.move_claimed_by).where(owed, free, others)
            if is_postgresql(connection):
                query = query.with_for_update(skip_locked=True)
            taken = connection.execute(query.order_by(ItemRow.id)).all()
            if taken:
                connection.execute(
                    update(ItemRow)
                    .where(ItemRow.id.in_([row.id for row in taken]))
                    .values(
                        move_claimed_by=self.node_id,
                        move_token=token,
                        move_lease_expires_at=later(now, self.lease),
                    )
                )
            for row in taken:
                if row.move_claimed_by not in (None, self.node_id):
                    self._event(connection, row.id, "move_recovered", node=row.move_claimed_by)
            rows = connection.execute(
                select(ItemRow)
                .where(owed, ItemRow.move_claimed_by == self.node_id)
                .order_by(ItemRow.id)
            ).all()
        return [(to_item(row), row.relocate_to) for row in rows]

    def release_move(self, item: Item | int) -> None:
        """Give the move claim back (the move failed for now): the lister's sweep retries it."""
        item_id, fence = move_fence(item)
        with self.transaction() as connection:
            connection.execute(
                update(ItemRow)
                .where(ItemRow.id == item_id, *fence)
                .values(move_claimed_by=None, move_token=None, move_lease_expires_at=None)
            )

    def holds_move(self, item: Item | int) -> bool:
        """Whether this node's move claim on `item` is still current (checked before the
        storage move, so a node that lost it leaves the input to the node that took it)."""
        item_id, fence = move_fence(item)
        with self.transaction() as connection:
            found = connection.scalar(select(ItemRow.id).where(ItemRow.id == item_id, *fence))
        return found is not None

    # -- notifications --------------------------------------------------------------------

    def record_notification(
        self, target: str, event: str, *, sent: bool, attempts: int, title: str, error: str | None
    ) -> None:
        """What a notification target was sent (or, `sent=False`, gave up on)."""
        with self.transaction() as connection:
            connection.execute(
                insert(NotificationRow).values(
                    at=self.clock(),
                    target=target,
                    event=event,
                    status="sent" if sent else "failed",
                    attempts=attempts,
                    title=title,
                    error=error,
                )
            )

    def open_degradation(self, target: str) -> datetime | None:
        """When `target` was sent a `degraded` that no `recovered` followed; None if none."""
        query = (
            select(NotificationRow.event, NotificationRow.at)
            .where(
                NotificationRow.target == target,
                NotificationRow.event.in_(("degraded", "recovered")),
                NotificationRow.status == "sent",
            )
            .order_by(NotificationRow.id.desc())
            .limit(1)
        )
        with self.transaction() as connection:
            last = connection.execute(query).first()
        return last.at if last is not None and last.event == "degraded" else None

    def notifications(self) -> list[dict[str, Any]]:
        """Every notification record, oldest first."""
        with self.transaction() as connection:
            rows = connection.execute(select(NotificationRow).order_by(NotificationRow.id))
            return [dict(row._mapping) for row in rows]
