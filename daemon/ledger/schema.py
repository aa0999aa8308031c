"""Tables. Changes here need an Alembic revision in `migrations/versions/`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def partial(condition: str) -> dict[str, Any]:
    """An index's WHERE clause on both backends."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


class Base(DeclarativeBase):
    pass


class ItemRow(Base):
    """One input revision: unique on (path_lower, rev)."""

    __tablename__ = "items"
    __table_args__ = (
        Index("uq_items_path_rev", "path_lower", "rev", unique=True),
        Index("ix_items_status_next", "status", "next_attempt_at"),
        Index("ix_items_discovered", "discovered_at"),
        Index("ix_items_content_hash", "content_hash", "status"),
        Index("ix_items_output_path", "output_path"),
        Index("ix_items_relocate", "relocate_to"),
        Index("ix_items_status_id", "status", "id"),
        Index("ix_items_outcome", "status", "finished_at"),
        Index("ix_items_path_ci", text("lower(path)")),
        Index("ix_items_archived_path", "archived_path"),
        Index("ix_items_claimed_by", "claimed_by", "status"),
        # the claim's scan: pending rows only, oldest first, whatever the table's size
        Index("ix_items_pending_id", "id", **partial("status = 'pending'")),
        Index("ix_items_move_claimed_by", "move_claimed_by"),
        # Never two claims at once on one input, nor (dedupe on) on one content hash.
        Index(
            "uq_items_processing_path",
            "path_lower",
            unique=True,
            **partial("status = 'processing'"),
        ),
        # NOT NULL: the planner never takes it for the one-claim-per-input check
        Index(
            "uq_items_processing_hash",
            "dedupe_key",
            unique=True,
            **partial("status = 'processing' AND dedupe_key IS NOT NULL"),
        ),
        Index("ix_items_duplicates", "finished_at", **partial("last_error LIKE 'duplicate of %'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text)
    path_lower: Mapped[str] = mapped_column(Text)
    rev: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    engine: Mapped[str | None] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(Text)
    status_url: Mapped[str | None] = mapped_column(Text)
    output_path: Mapped[str | None] = mapped_column(Text)
    relocate_to: Mapped[str | None] = mapped_column(String(16))
    archived_path: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    discovered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    archived_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Fencing (0005): a fresh token per claim; every write about the claim checks it.
    claim_token: Mapped[int | None] = mapped_column(BigInteger)
    dedupe_key: Mapped[str | None] = mapped_column(String(64))  # content hash while claimed
    # The archive move has its own claim: `claimed_by` is cleared when the row finishes.
    move_claimed_by: Mapped[str | None] = mapped_column(String(255))
    move_token: Mapped[int | None] = mapped_column(BigInteger)
    move_lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class EventRow(Base):
    """Append-only audit trail: one row per transition."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_item", "item_id", "id"),
        Index("ix_events_at", "at"),
        Index("ix_events_event_at", "event", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    event: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)


class CursorRow(Base):
    """The storage cursor, advanced in the same transaction as the rows it produced."""

    __tablename__ = "cursors"

    storage_key: Mapped[str] = mapped_column(String(512), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class NotificationRow(Base):
    """One notification sent, or given up on after its retries (see daemon.alerts)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    target: Mapped[str] = mapped_column(String(64))  # `webhook-1`, `email-2`
    event: Mapped[str] = mapped_column(String(32))  # failed, degraded, recovered, digest
    status: Mapped[str] = mapped_column(String(16))  # sent or failed
    attempts: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class OutputRow(Base):
    """One output file of one input revision (a profile may make several): written, and
    recorded here, before the input is archived. `path` is relative to output/; `path_lower`
    is its name key (lower case on Dropbox, exact on a case-sensitive local folder); the
    owner of a name is the input (items.path_lower) of the revisions that wrote it."""

    __tablename__ = "outputs"
    __table_args__ = (
        Index("uq_outputs_item_slot", "item_id", "slot", unique=True),
        Index("ix_outputs_path_lower", "path_lower"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    slot: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    path_lower: Mapped[str] = mapped_column(Text)
    spec: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    written_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class NodeRow(Base):
    """One daemon process on this ledger. `instance` tells two processes with one name
    apart; `expires_at` (heartbeat + lease) is when others may take its claims."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    instance: Mapped[int] = mapped_column(BigInteger)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    schema_revision: Mapped[str] = mapped_column(String(32))  # what its code expects
    code_version: Mapped[str] = mapped_column(String(64))


class LeaseRow(Base):
    """A named lease (`lister`: the one node that lists, longpolls, writes the cursor and
    sweeps moves; `submit-pause:<pool>`: Adobe's Retry-After, holder-less)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(255))
    token: Mapped[int | None] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SubmitSlotRow(Base):
    """One submission slot granted by the shared limiter: it counts until `period` after
    `finished_at`, or, never finished (its node died), until `expires_at`."""

    __tablename__ = "submit_slots"
    __table_args__ = (Index("ix_submit_slots_pool", "pool", "granted_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool: Mapped[str] = mapped_column(String(64))
    holder: Mapped[str] = mapped_column(String(255))
    granted_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OutputNameRow(Base):
    """Who owns an output name: the key is the name (folded to lower case on Dropbox), so
    two inputs can never both hold it."""

    __tablename__ = "output_names"

    name_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    owner: Mapped[str] = mapped_column(Text)  # the input's items.path_lower
    reserved_at: Mapped[datetime] = mapped_column(UtcDateTime)
