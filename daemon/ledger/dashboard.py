"""The status page's reads: a few index range counts and pages of revisions, cheap at
any ledger size (bench/web_status.py measures them at 100,000 revisions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from daemon.ledger.audit import SUBMISSION_EVENTS, Bucket, ItemFilter, LedgerAudit
from daemon.ledger.audit_sql import count_of, window
from daemon.ledger.schema import EventRow, ItemRow
from daemon.models import Item, ItemStatus


@dataclass(frozen=True, slots=True)
class Queue:
    pending: int  # waiting, never tried (or requeued)
    retrying: int  # waiting for another attempt
    processing: int


@dataclass(frozen=True, slots=True)
class Overview:
    today: dict[ItemStatus, int]
    week: dict[ItemStatus, int]
    all_time: dict[ItemStatus, int]
    queue: Queue
    hourly: list[Bucket]  # the last 48 hours, oldest first
    submissions_today: int


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]
    number: int  # 1-based
    has_more: bool


class Dashboard(LedgerAudit):
    """Read-only queries for the status page."""

    def outcome_counts(self, since: datetime | None = None) -> dict[ItemStatus, int]:
        """Outcomes finished since `since` (all time without it)."""
        with self.reader.transaction() as connection:
            return self._counts(connection, window(ItemRow.finished_at, since, None))

    def submissions_since(self, since: datetime) -> int:
        """Engine submissions (what Adobe bills) made since `since`."""
        query = select(count_of(EventRow.event.in_(SUBMISSION_EVENTS), EventRow.at >= since))
        with self.reader.transaction() as connection:
            return connection.scalar(query) or 0

    def queue(self) -> Queue:
        pending = ItemRow.status == ItemStatus.PENDING
        probes = (
            count_of(pending, ItemRow.attempts == 0),
            count_of(pending, ItemRow.attempts > 0),
            count_of(ItemRow.status == ItemStatus.PROCESSING),
        )
        with self.reader.transaction() as connection:
            return Queue(*connection.execute(select(*probes)).one())

    def overview(self, now: datetime, day_start: datetime) -> Overview:
        """Counts today (since `day_start`, local midnight), over 7 days and all time."""
        hour = now.replace(minute=0, second=0, microsecond=0)
        return Overview(
            today=self.outcome_counts(day_start),
            week=self.outcome_counts(now - timedelta(days=7)),
            all_time=self.outcome_counts(),
            queue=self.queue(),
            hourly=self.buckets(hour - timedelta(hours=47), hour + timedelta(hours=1), "hour"),
            submissions_today=self.submissions_since(day_start),
        )

    def page(self, flt: ItemFilter, number: int, per_page: int) -> Page:
        """Revisions matching `flt`, newest first, page `number` (1-based)."""
        number = max(number, 1)
        items = self.list_items(flt, limit=per_page + 1, offset=(number - 1) * per_page)
        return Page(items[:per_page], number, len(items) > per_page)
