"""Tables. Changes here need an Alembic revision in `migrations/versions/`."""

from __future__ import annotations

from datetime import UTC, datetime

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
        Index(
            "ix_items_duplicates",
            "finished_at",
            sqlite_where=text("last_error LIKE 'duplicate of %'"),
            postgresql_where=text("last_error LIKE 'duplicate of %'"),
        ),
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
