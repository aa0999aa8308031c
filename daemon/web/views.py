"""Turning the dashboard's values into what the page and its JSON show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.ledger.dashboard import Overview
from daemon.models import ItemStatus

SHOWN = (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED)


def when(moment: datetime | None) -> str:
    """A timestamp as the server's local time, to the second."""
    if moment is None:
        return "—"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def parse_day(text: str | None, *, end: bool = False) -> datetime | None:
    """`2026-11-29` (or `2026-11-29T08:00`) as the server's local time; with `end`, a bare
    date means the end of that day. ValueError with a readable message otherwise."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use 2026-11-29)") from None
    if end and len(text.strip()) == 10:
        moment += timedelta(days=1)
    return (moment if moment.tzinfo else moment.astimezone()).astimezone(UTC)


def _counts(counts: dict[ItemStatus, int]) -> dict[str, int]:
    return {status.value: counts.get(status, 0) for status in SHOWN}


def overview_record(
    overview: Overview,
    *,
    health: str | None,
    last_poll: float | None,
    engine: str,
) -> dict[str, Any]:
    """The overview as JSON: what the page draws and what its live updates refresh."""
    return {
        "counts": {
            "today": _counts(overview.today),
            "week": _counts(overview.week),
            "all": _counts(overview.all_time),
        },
        "queue": {
            "pending": overview.queue.pending,
            "retrying": overview.queue.retrying,
            "processing": overview.queue.processing,
        },
        "hourly": {
            "t": [int(b.start.timestamp()) for b in overview.hourly],
            "succeeded": [b.outcomes[ItemStatus.SUCCEEDED] for b in overview.hourly],
            "failed": [b.outcomes[ItemStatus.FAILED] for b in overview.hourly],
        },
        "submissions_today": overview.submissions_today,
        "engine": engine,
        "health": health or "ok",
        "healthy": health is None,
        "last_poll": when(datetime.fromtimestamp(last_poll, UTC)) if last_poll else "—",
        "newest_result": overview.newest_result,
        # changes when a revision newly fails, or one listed stops being failed (a retry)
        "failures_key": f"{overview.newest_failure}:{overview.all_time[ItemStatus.FAILED]}",
    }
