"""The ledger's write side: record discoveries with their cursor, claim, and transition.

Every transition is a compare-and-set (`UPDATE ... WHERE id=:id AND status=:expected`);
a rowcount other than 1 raises LostClaimError. Each transition appends an event row in
the same transaction.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from daemon.errors import LostClaimError
from daemon.ledger.database import migrate
from daemon.ledger.outcomes import RELEASED, Outcomes
from daemon.ledger.queries import Clock, to_item, utcnow
from daemon.ledger.schema import CursorRow, ItemRow, NotificationRow
from daemon.models import ChangeBatch, DeletedEntry, Item, ItemStatus, RemoteFile


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


class Ledger(Outcomes):
    """Durable state of every input revision. Safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utcnow,
        node_id: str | None = None,
        lease_seconds: float = 600.0,
    ) -> None:
        super().__init__(
            url,
            clock=clock,
            node_id=node_id or default_node_id(),
            lease_seconds=lease_seconds,
            writer=True,
        )

    def migrate(self) -> bool:
        return migrate(self.engine)

    # -- discovery ------------------------------------------------------------------------

    def get_cursor(self, storage_key: str) -> str | None:
        with self.transaction() as connection:
            return connection.scalar(
                select(CursorRow.cursor).where(CursorRow.storage_key == storage_key)
            )

    def record_changes(self, storage_key: str, batch: ChangeBatch, engine: str) -> tuple[int, int]:
        """Insert new revisions and advance the cursor in one transaction.

        Returns (new revisions, pending revisions skipped because their file was deleted).
        Revisions already known are ignored, so replaying a page after a reset is safe.
        """
        added = deleted = 0
        with self.transaction() as connection:
            for change in batch.changes:
                if isinstance(change, DeletedEntry):
                    deleted += self._skip_deleted(connection, change.path_lower)
                elif self._insert_file(connection, change, engine):
                    added += 1
            self._store_cursor(connection, storage_key, batch.cursor)
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

    def _store_cursor(self, connection: Connection, storage_key: str, cursor: str) -> None:
        values = {"cursor": cursor, "updated_at": self.clock()}
        changed = connection.execute(
            update(CursorRow).where(CursorRow.storage_key == storage_key).values(**values)
        ).rowcount
        if changed == 0:
            connection.execute(insert(CursorRow).values(storage_key=storage_key, **values))

    def reset_cursor(self, storage_key: str) -> None:
        with self.transaction() as connection:
            connection.execute(delete(CursorRow).where(CursorRow.storage_key == storage_key))

    # -- claims -------------------------------------------------------------------------

    def claim_next(self) -> Item | None:
        """Take the oldest due pending revision (compare-and-set; another worker or
        machine may win the race, then the next candidate is tried)."""
        now = self.clock()
        due = (ItemRow.next_attempt_at.is_(None)) | (ItemRow.next_attempt_at <= now)
        with self.transaction() as connection:
            candidates = connection.scalars(
                select(ItemRow.id)
                .where(ItemRow.status == ItemStatus.PENDING, due)
                .order_by(ItemRow.id)
                .limit(8)
            ).all()
            for item_id in candidates:
                values = {
                    "attempts": ItemRow.attempts + 1,
                    "started_at": now,
                    "claimed_by": self.node_id,
                    "lease_expires_at": now + self.lease,
                    "next_attempt_at": None,
                }
                try:
                    self._transition(
                        connection,
                        item_id,
                        ItemStatus.PENDING,
                        ItemStatus.PROCESSING,
                        "claimed",
                        values,
                    )
                except LostClaimError:
                    continue
                return to_item(
                    connection.execute(select(ItemRow).where(ItemRow.id == item_id)).one()
                )
        return None

    def recover_expired(self) -> list[Item]:
        """Put back `processing` revisions left by a crash or stop: ours (any earlier
        process on this host) and any whose lease ran out. Remote job ids are kept."""
        now = self.clock()
        host = self.node_id.split(":", 1)[0]
        with self.transaction() as connection:
            rows = connection.execute(
                select(ItemRow)
                .where(ItemRow.status == ItemStatus.PROCESSING)
                .where(
                    ItemRow.claimed_by.like(f"{host}:%")
                    | (ItemRow.lease_expires_at < now)
                    | ItemRow.claimed_by.is_(None)
                )
            ).all()
            for row in rows:
                self._transition(
                    connection,
                    row.id,
                    ItemStatus.PROCESSING,
                    ItemStatus.PENDING,
                    "recovered",
                    RELEASED,
                    previous_owner=row.claimed_by,
                )
        return [to_item(row) for row in rows]

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

    def notifications(self) -> list[dict[str, Any]]:
        """Every notification record, oldest first."""
        with self.transaction() as connection:
            rows = connection.execute(select(NotificationRow).order_by(NotificationRow.id))
            return [dict(row._mapping) for row in rows]
