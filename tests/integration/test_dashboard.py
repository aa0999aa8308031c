"""The status page's overview on real SQLite files and real PostgreSQL: its one-statement
counts and grouped 48-hour chart agree with the audit's per-period index counts (the
reference), and the query plans use the indexes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from daemon.ledger import Ledger
from daemon.ledger.audit import ItemFilter, LedgerAudit
from daemon.ledger.dashboard import HOURS, Dashboard
from daemon.ledger.queries import LedgerReader
from daemon.models import ItemStatus
from tests.integration.test_audit import START, Clock, History

SUCCEEDED, FAILED, SKIPPED = ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(ledger_url, clock=clock, node_id="host-a:1")
    ledger.migrate()
    yield ledger
    ledger.close()


@pytest.fixture
def dashboard(ledger_url: str, ledger: Ledger) -> Iterator[Dashboard]:
    dashboard = Dashboard(LedgerReader(ledger_url, writer=False))
    yield dashboard
    dashboard.close()


def three_days(ledger: Ledger, clock: Clock) -> None:
    """Outcomes spread over 3 days (before, across and inside the 48-hour window, on hour
    edges too), submissions, a revision waiting and one waiting to be retried."""
    history = History(ledger, clock)
    outcomes = (SUCCEEDED, SUCCEEDED, FAILED, SKIPPED, SUCCEEDED)
    for n in range(40):
        clock.now = START + timedelta(hours=n * 1.8, minutes=n % 7)
        history.run(
            f"p{n}.jpg",
            outcomes[n % len(outcomes)],
            queued=0,
            engine_seconds=60 if n % 4 else 3600 - 60,  # some land on the next hour
            reason="boom" if outcomes[n % len(outcomes)] is FAILED else None,
            submissions=n % 3,
        )
    clock.advance(10)
    history.discover("waiting.jpg")
    retrying = history.discover("retrying.jpg")
    ledger.claim_next()  # waiting.jpg, now processing
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == retrying.id
    values = {"next_attempt_at": clock.now + timedelta(hours=1), "claimed_by": None}
    ledger.transition(
        claimed.id, ItemStatus.PROCESSING, ItemStatus.PENDING, "retry_scheduled", values
    )


def test_the_overview_agrees_with_the_audit(
    ledger: Ledger, clock: Clock, dashboard: Dashboard, ledger_url: str
) -> None:
    three_days(ledger, clock)
    now = clock.now + timedelta(minutes=5)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    overview = dashboard.overview(now, day_start)

    audit = LedgerAudit(LedgerReader(ledger_url, writer=False))
    try:
        hour = now.replace(minute=0, second=0, microsecond=0)
        expected = audit.buckets(
            hour - timedelta(hours=HOURS - 1), hour + timedelta(hours=1), "hour"
        )
        today = audit.stats(since=day_start).counts
        week = audit.stats(since=now - timedelta(days=7)).counts
        all_time = audit.stats().counts
        newest = audit.list_items(ItemFilter((SUCCEEDED,)), limit=1)
        all_failed = audit.list_items(ItemFilter((FAILED,)))
    finally:
        audit.close()
    assert len(overview.hourly) == HOURS
    assert overview.hourly == expected
    assert sum(b.outcomes[SUCCEEDED] for b in overview.hourly) > 5  # the chart has data
    assert sum(b.submissions for b in overview.hourly) > 5
    outcomes = (SUCCEEDED, FAILED, SKIPPED)
    assert overview.today == {s: today[s] for s in outcomes}
    assert overview.week == {s: week[s] for s in outcomes}
    assert overview.all_time == {s: all_time[s] for s in outcomes}
    assert 0 < sum(overview.today.values()) < sum(overview.all_time.values())
    assert (overview.queue.pending, overview.queue.retrying, overview.queue.processing) == (0, 1, 1)
    assert overview.submissions_today == sum(
        b.submissions for b in overview.hourly if b.start >= day_start
    )
    assert overview.newest_result == newest[0].id
    assert overview.newest_failure == max(i.id for i in all_failed)


def test_an_empty_ledger_has_a_chart_of_zeros(dashboard: Dashboard) -> None:
    now = datetime(2026, 12, 6, 11, 30, tzinfo=UTC)
    overview = dashboard.overview(now, now.replace(hour=0, minute=0))
    assert [b.start for b in overview.hourly][-1] == datetime(2026, 12, 6, 11, tzinfo=UTC)
    assert all(sum(b.outcomes.values()) == b.submissions == 0 for b in overview.hourly)
    assert overview.newest_result is None and overview.newest_failure is None
    assert sum(overview.all_time.values()) == 0


def test_the_chart_reads_ranges_of_the_indexes(ledger: Ledger, dashboard: Dashboard) -> None:
    """The plans of the statements the overview sends, on both databases: the chart walks
    ix_items_outcome and an index of the events' times, never a whole table."""
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append((statement, parameters))

    event.listen(dashboard.reader.engine, "before_cursor_execute", grab)
    now = datetime(2026, 12, 6, 11, 30, tzinfo=UTC)
    dashboard.overview(now, now.replace(hour=0, minute=0))
    event.remove(dashboard.reader.engine, "before_cursor_execute", grab)
    grouped = [(sql, params) for sql, params in sent if "GROUP BY" in sql]
    assert len(grouped) == 2
    postgresql = ledger.engine.dialect.name == "postgresql"
    with ledger.engine.connect() as connection:
        if postgresql:
            connection.exec_driver_sql("SET enable_seqscan = off")  # the tables are tiny
        plans = [
            " ".join(
                str(row[-1])
                for row in connection.exec_driver_sql(
                    ("EXPLAIN " if postgresql else "EXPLAIN QUERY PLAN ") + sql, params
                )
            )
            for sql, params in grouped
        ]
    assert "ix_items_outcome" in plans[0], plans[0]
    assert "ix_events_event_at" in plans[1] or "ix_events_at" in plans[1], plans[1]


def test_all_time_counts_follow_a_requeue_of_an_old_revision(
    ledger: Ledger, clock: Clock, dashboard: Dashboard
) -> None:
    """Counts of old finishes are kept between polls; a retry of a revision that failed
    weeks ago (a `retry_requested` event) and its abandonment are seen on the next poll."""
    history = History(ledger, clock)
    old = history.run("old.jpg", FAILED, reason="boom")
    history.run("old-ok.jpg", SUCCEEDED)
    clock.advance(30 * 86400)
    history.run("new.jpg", SUCCEEDED)
    now = clock.now

    def counts() -> tuple[int, int, int]:
        overview = dashboard.overview(now, now.replace(hour=0, minute=0))
        return overview.all_time[SUCCEEDED], overview.all_time[FAILED], overview.queue.pending

    assert counts() == (2, 1, 0)
    reset = {"finished_at": None, "last_error": None, "next_attempt_at": None, "attempts": 0}
    ledger.transition(old.id, FAILED, ItemStatus.PENDING, "retry_requested", reset)
    assert counts() == (2, 0, 1)
    back = {"finished_at": old.finished_at, "last_error": "boom"}
    ledger.transition(old.id, ItemStatus.PENDING, FAILED, "requeue_abandoned", back)
    assert counts() == (2, 1, 0)
    history.run("newer.jpg", SUCCEEDED)
    assert counts() == (3, 1, 0)
