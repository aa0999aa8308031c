"""Adobe's submission budget, shared by every node on one ledger (`submit_slots`).

The rule is the in-memory limiter's (daemon.engines.ratelimit.SubmitLimiter): at most
`limit` slots count at once; a slot counts from its grant until `period` after its request
finished. A slot whose node died before finishing it counts until `expires_at` (grant +
the request timeout), so a dead node's slot is free again within the request timeout.
A Retry-After pauses every node: a holder-less `leases` row `submit-pause:<pool>`.

Grants are serialised per pool by a transaction-scoped advisory lock on PostgreSQL (and by
`BEGIN IMMEDIATE` on SQLite), so two nodes never both take the last slot. Times are the
database's on PostgreSQL.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from daemon.ledger.claims import is_postgresql
from daemon.ledger.nodes import NodeLedger
from daemon.ledger.schema import LeaseRow, SubmitSlotRow

POLL = 0.1  # seconds between looks while every slot is held by a request still running
_LOCK_BASE = 0x63750000  # "cu" + the pool's CRC


class SubmitSlots:
    """The slot table of one pool (`photoshop`), as the shared limiter's store."""

    def __init__(
        self, ledger: NodeLedger, pool: str, limit: int, period: float, timeout: float
    ) -> None:
        self.ledger, self.pool = ledger, pool
        self.limit, self.period = limit, timedelta(seconds=period)
        self.timeout = timedelta(seconds=timeout)
        self._pause = f"submit-pause:{pool}"
        self._lock_key = _LOCK_BASE + (zlib.crc32(pool.encode()) & 0xFFFF)

    def _now(self, connection: Connection) -> datetime:
        if is_postgresql(connection):
            now = connection.scalar(select(func.clock_timestamp()))
            assert isinstance(now, datetime)
            return now
        return self.ledger.clock()

    def try_acquire(self) -> tuple[int | None, float]:
        """(slot id, 0) when granted; else (None, seconds to wait before asking again)."""
        with self.ledger.transaction() as connection:
            if is_postgresql(connection):
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
            now = self._now(connection)
            mine = SubmitSlotRow.pool == self.pool
            finished = SubmitSlotRow.finished_at.is_not(None)
            connection.execute(
                delete(SubmitSlotRow).where(
                    mine,
                    or_(
                        and_(finished, SubmitSlotRow.finished_at <= now - self.period),
                        and_(~finished, SubmitSlotRow.expires_at <= now),
                    ),
                )
            )
            paused = connection.scalar(
                select(LeaseRow.expires_at).where(LeaseRow.name == self._pause)
            )
            if paused is not None and paused > now:
                return None, (paused - now).total_seconds()
            counted = connection.execute(select(SubmitSlotRow.finished_at).where(mine)).all()
            if len(counted) < self.limit:
                granted = connection.scalar(
                    insert(SubmitSlotRow)
                    .values(
                        pool=self.pool,
                        holder=self.ledger.node_id,
                        granted_at=now,
                        expires_at=now + self.timeout,
                    )
                    .returning(SubmitSlotRow.id)
                )
                return int(granted or 0), 0.0
            ends = [row.finished_at for row in counted if row.finished_at is not None]
            if not ends:
                return None, min(self.period.total_seconds(), POLL)
            return None, max((min(ends) + self.period - now).total_seconds(), 0.0)

    def finish(self, slot: int) -> None:
        """The request of `slot` finished: it counts `period` more."""
        with self.ledger.transaction() as connection:
            connection.execute(
                update(SubmitSlotRow)
                .where(SubmitSlotRow.id == slot)
                .values(finished_at=self._now(connection))
            )

    def pause(self, seconds: float) -> None:
        """Grant nothing, on any node, for `seconds` (Adobe said Retry-After)."""
        with self.ledger.transaction() as connection:
            until = self._now(connection) + timedelta(seconds=seconds)
            upsert: Any = pg_insert if is_postgresql(connection) else sqlite_insert
            statement = upsert(LeaseRow).values(name=self._pause, holder=None, expires_at=until)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"expires_at": statement.excluded.expires_at},
                    where=LeaseRow.expires_at < statement.excluded.expires_at,
                )
            )
