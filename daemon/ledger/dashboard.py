"""The status page's reads, cheap at any ledger size and on every poll.

The overview is one read transaction of three statements built once, so SQLAlchemy
compiles each once per process and a poll costs little more than the database's own work
(bench/web_status.py measures it): every count is an index range count (ix_items_outcome,
ix_items_status_id, ix_events_event_at), and the 48-hour chart is one GROUP BY over the
revisions finished in those hours (ix_items_outcome) plus one over the submissions made in
them (ix_events_event_at).

All-time counts are the counts of revisions finished before a cutoff SETTLED_DAYS ago
(kept, since a revision is finished once, at the time it is finished) plus a range count
since the cutoff. The kept part is read again when the cutoff moves (once a day) and
whenever a requeue event appears (`REOPENING_EVENTS`: the only way a finished revision
leaves its outcome or comes back to it with its old finish time), counted on each poll
before the kept part is used, from ix_events_event_at.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from daemon.ledger.audit import SUBMISSION_EVENTS, Bucket, ItemFilter, LedgerAudit
from daemon.ledger.audit_sql import count_of, hour_of, parse_hour
from daemon.ledger.audit_values import OUTCOMES
from daemon.ledger.queries import LedgerReader
from daemon.ledger.requeue import REOPENING_EVENTS
from daemon.ledger.schema import EventRow, ItemRow, UtcDateTime
from daemon.models import Item, ItemStatus

HOURS = 48  # the chart's span, the current hour included
SETTLED_DAYS = 8  # finishes before this many days (at least) ago: counted once, kept


@dataclass(frozen=True, slots=True)
class Queue:
    pending: int  # waiting, never tried (or requeued)
    retrying: int  # waiting for another attempt
    processing: int


@dataclass(frozen=True, slots=True)
class Overview:
    today: dict[ItemStatus, int]  # outcomes only
    week: dict[ItemStatus, int]
    all_time: dict[ItemStatus, int]
    queue: Queue
    hourly: list[Bucket]  # the last 48 hours, oldest first
    submissions_today: int
    newest_result: int | None  # the id of the latest revision that succeeded
    newest_failure: int | None  # the id of the latest revision that failed


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]
    number: int  # 1-based
    has_more: bool


def _since(name: str) -> Any:
    return bindparam(name, type_=UtcDateTime())


def _counts_statement() -> Any:
    """Outcomes since `day`, `week` and `settled`, the requeues ever made, the queue,
    today's submissions and the newest success and failure: one row."""
    outcome = [ItemRow.status == s for s in OUTCOMES]
    finished = ItemRow.finished_at
    pending = ItemRow.status == ItemStatus.PENDING
    probes = [
        *(count_of(o, finished >= _since("day")) for o in outcome),
        *(count_of(o, finished >= _since("week")) for o in outcome),
        *(count_of(o, finished >= _since("settled")) for o in outcome),
        count_of(EventRow.event.in_(REOPENING_EVENTS)),
        count_of(pending, ItemRow.attempts == 0),
        count_of(pending, ItemRow.attempts > 0),
        count_of(ItemRow.status == ItemStatus.PROCESSING),
        count_of(EventRow.event.in_(SUBMISSION_EVENTS), EventRow.at >= _since("day")),
        *(
            select(func.max(ItemRow.id)).where(ItemRow.status == s).scalar_subquery()
            for s in (ItemStatus.SUCCEEDED, ItemStatus.FAILED)
        ),
    ]
    return select(*probes)


def _settled_statement() -> Any:
    """Outcomes finished before `settled`: one row."""
    return select(
        *(count_of(ItemRow.status == s, ItemRow.finished_at < _since("settled")) for s in OUTCOMES)
    )


def _hourly_statements() -> tuple[Any, Any]:
    """(status, hour, count) of the outcomes finished in [since, until), and (hour, count)
    of the submissions made then."""
    finished = hour_of(ItemRow.finished_at).label("hour")
    outcomes = (
        select(ItemRow.status, finished, func.count())
        .where(
            ItemRow.status.in_([s.value for s in OUTCOMES]),
            ItemRow.finished_at >= _since("since"),
            ItemRow.finished_at < _since("until"),
        )
        .group_by(ItemRow.status, finished)
    )
    made = hour_of(EventRow.at).label("hour")
    submissions = (
        select(made, func.count())
        .where(
            EventRow.event.in_(SUBMISSION_EVENTS),
            EventRow.at >= _since("since"),
            EventRow.at < _since("until"),
        )
        .group_by(made)
    )
    return outcomes, submissions


class Dashboard(LedgerAudit):
    """Read-only queries for the status page."""

    _counts_query = _counts_statement()
    _settled_query = _settled_statement()
    _outcomes_query, _submissions_query = _hourly_statements()

    def __init__(self, reader: LedgerReader) -> None:
        super().__init__(reader)
        self._settled: tuple[tuple[datetime, int], tuple[int, ...]] | None = None
        self._settled_lock = threading.Lock()

    def overview(self, now: datetime, day_start: datetime) -> Overview:
        """Counts today (since `day_start`, local midnight), over 7 days and all time."""
        midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        settled = midnight - timedelta(days=SETTLED_DAYS)
        since = {"day": day_start, "week": now - timedelta(days=7), "settled": settled}
        with self.reader.transaction() as connection:
            row = connection.execute(self._counts_query, since).one()
            n = len(OUTCOMES)
            today, week, recent = (row[i * n : (i + 1) * n] for i in range(3))
            requeues, pending, retrying, processing, submissions, succeeded, failed = row[3 * n :]
            before = self._settled_counts(connection, settled, requeues)
            hourly = self._hourly(connection, now)
        return Overview(
            today=dict(zip(OUTCOMES, today, strict=True)),
            week=dict(zip(OUTCOMES, week, strict=True)),
            all_time={s: old + new for s, old, new in zip(OUTCOMES, before, recent, strict=True)},
            queue=Queue(pending, retrying, processing),
            hourly=hourly,
            submissions_today=submissions,
            newest_result=succeeded,
            newest_failure=failed,
        )

    def _settled_counts(
        self, connection: Connection, settled: datetime, requeues: int
    ) -> tuple[int, ...]:
        """Outcomes finished before `settled`, kept while no requeue event appears (the
        requeues were counted before this reads them, so a requeue in between only makes
        the next poll read them again)."""
        key = (settled, requeues)
        with self._settled_lock:
            if self._settled is not None and self._settled[0] == key:
                return self._settled[1]
        counts = tuple(connection.execute(self._settled_query, {"settled": settled}).one())
        with self._settled_lock:
            self._settled = (key, counts)
        return counts

    def _hourly(self, connection: Connection, now: datetime) -> list[Bucket]:
        """Every one of the last HOURS UTC hours (zeros included), oldest first."""
        current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        starts = [current - timedelta(hours=h) for h in range(HOURS - 1, -1, -1)]
        window = {"since": starts[0], "until": current + timedelta(hours=1)}
        outcomes = {start: dict.fromkeys(OUTCOMES, 0) for start in starts}
        for status, hour, count in connection.execute(self._outcomes_query, window):
            outcomes[parse_hour(hour)][ItemStatus(status)] = count
        submissions = dict.fromkeys(starts, 0)
        for hour, count in connection.execute(self._submissions_query, window):
            submissions[parse_hour(hour)] = count
        return [Bucket(start, outcomes[start], submissions[start]) for start in starts]

    def page(self, flt: ItemFilter, number: int, per_page: int) -> Page:
        """Revisions matching `flt`, newest first, page `number` (1-based)."""
        number = max(number, 1)
        items = self.list_items(flt, limit=per_page + 1, offset=(number - 1) * per_page)
        return Page(items[:per_page], number, len(items) > per_page)
