"""The ledger's read side: lookups the pipeline needs and the audit listing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import OperationalError

from daemon.errors import TransientError
from daemon.ledger.database import create_database_engine
from daemon.ledger.schema import EventRow, ItemRow
from daemon.models import Item, ItemStatus

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_item(row: Any) -> Item:
    return Item(
        id=row.id,
        path=row.path,
        path_lower=row.path_lower,
        rev=row.rev,
        content_hash=row.content_hash,
        size=row.size,
        status=ItemStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        engine=row.engine,
        job_id=row.job_id,
        status_url=row.status_url,
        output_path=row.output_path,
        discovered_at=row.discovered_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        archived_at=row.archived_at,
        archived_path=row.archived_path,
        claim_token=row.claim_token,
        move_token=row.move_token,
    )


class LedgerReader:
    """Connection handling and read-only queries. `writer=False` opens SQLite with deferred
    transactions, so an audit reader never takes the write lock."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utcnow,
        node_id: str = "cli",
        lease_seconds: float = 600.0,
        writer: bool = True,
        pool_size: int | None = None,
    ) -> None:
        self.url = url
        # A writer's locks must not outlive its lease; a reader (audit, export, the status
        # page's queries) takes none, and may stream to a slow consumer.
        self.engine = create_database_engine(
            url,
            writer=writer,
            pool_size=pool_size,
            idle_in_transaction=lease_seconds if writer else None,
        )
        self.clock = clock
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def shared(self) -> bool:
        """Whether several nodes may share this ledger (PostgreSQL; SQLite is one machine's)."""
        return self.engine.dialect.name == "postgresql"

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except OperationalError as exc:
            raise TransientError(f"ledger unavailable: {exc.orig}") from exc

    def _one(self, statement: Any) -> Item | None:
        with self.transaction() as connection:
            row = connection.execute(statement).first()
        return to_item(row) if row is not None else None

    def get(self, item_id: int) -> Item | None:
        return self._one(select(ItemRow).where(ItemRow.id == item_id))

    def find_succeeded_duplicate(self, content_hash: str, exclude_id: int) -> Item | None:
        """The latest succeeded revision with the same content, for dedupe."""
        return self._one(
            select(ItemRow)
            .where(
                ItemRow.content_hash == content_hash,
                ItemRow.status == ItemStatus.SUCCEEDED,
                ItemRow.id != exclude_id,
                ItemRow.output_path.is_not(None),
            )
            .order_by(ItemRow.id.desc())
            .limit(1)
        )

    def pending_relocations(self) -> list[tuple[Item, str]]:
        with self.transaction() as connection:
            rows = connection.execute(
                select(ItemRow).where(ItemRow.relocate_to.is_not(None)).order_by(ItemRow.id)
            ).all()
        return [(to_item(row), row.relocate_to) for row in rows]

    def counts(self) -> dict[ItemStatus, int]:
        with self.transaction() as connection:
            rows = connection.execute(
                select(ItemRow.status, func.count()).group_by(ItemRow.status)
            ).all()
        found = {ItemStatus(status): count for status, count in rows}
        return {status: found.get(status, 0) for status in ItemStatus}

    def next_due_at(self) -> datetime | None:
        """When the earliest pending revision becomes due (None if none is pending)."""
        with self.transaction() as connection:
            pending = connection.execute(
                select(
                    func.count(),
                    func.max(ItemRow.next_attempt_at.is_(None).cast(ItemRow.attempts.type)),
                    func.min(ItemRow.next_attempt_at),
                ).where(ItemRow.status == ItemStatus.PENDING)
            ).one()
        count, any_now, earliest = pending
        if not count:
            return None
        return self.clock() if any_now else earliest

    def list_items(
        self,
        *,
        statuses: Sequence[ItemStatus] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[Item]:
        query = select(ItemRow)
        if statuses:
            query = query.where(ItemRow.status.in_([s.value for s in statuses]))
        if since is not None:
            query = query.where(ItemRow.discovered_at >= since)
        if until is not None:
            query = query.where(ItemRow.discovered_at < until)
        order = ItemRow.id.desc() if newest_first else ItemRow.id
        query = query.order_by(order).limit(limit)
        with self.transaction() as connection:
            return [to_item(row) for row in connection.execute(query)]

    def finished_since(self, since: datetime) -> dict[ItemStatus, int]:
        """Terminal outcomes recorded since `since` (for a run's summary line)."""
        with self.transaction() as connection:
            rows = connection.execute(
                select(ItemRow.status, func.count())
                .where(ItemRow.finished_at >= since)
                .group_by(ItemRow.status)
            ).all()
        return {ItemStatus(status): count for status, count in rows}

    def events(self, item_id: int) -> list[dict[str, Any]]:
        """The audit trail of one revision, oldest first."""
        with self.transaction() as connection:
            rows = connection.execute(
                select(EventRow).where(EventRow.item_id == item_id).order_by(EventRow.id)
            ).all()
        return [
            {
                "at": r.at,
                "event": r.event,
                "from_status": r.from_status,
                "to_status": r.to_status,
                "actor": r.actor,
                "detail": json.loads(r.detail) if r.detail else {},
            }
            for r in rows
        ]
