"""Portable SQL for the audit: every expression here runs on SQLite and PostgreSQL; the
one that differs (seconds between two timestamps) is compiled per dialect."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, String, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from daemon.ledger.audit_values import AuditArgumentError

PERIODS = ("hour", "day", "month")
MAX_PERIODS = 10_000


class seconds_between(FunctionElement[float]):
    """Seconds from the first timestamp to the second."""

    type = Float()
    inherit_cache = True


@compiles(seconds_between)
def _seconds_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(seconds_between, "postgresql")
def _seconds_postgresql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION)"


class hour_of(FunctionElement[str]):
    """The UTC hour a timestamp falls in, as text `YYYY-MM-DD HH` (a GROUP BY key)."""

    type = String()
    inherit_cache = True


@compiles(hour_of)
def _hour_sqlite(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"substr({moment}, 1, 13)"  # naive UTC text: `2026-11-29 08:15:00.000000`


@compiles(hour_of, "postgresql")
def _hour_postgresql(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"to_char({moment} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')"


def parse_hour(key: str) -> datetime:
    """`hour_of`'s text back to the hour's first instant (UTC)."""
    return datetime.strptime(key, "%Y-%m-%d %H").replace(tzinfo=UTC)


def glob_to_like(pattern: str) -> str:
    """Shell glob (`*`, `?`) to a LIKE pattern with `\\` as escape; `*` also crosses `/`."""
    special = {"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}
    return "".join(special.get(ch, ch) for ch in pattern.lower())


def glob_prefix(pattern: str) -> str:
    return re.split(r"[*?]", pattern.lower(), maxsplit=1)[0]


def count_of(*conditions: Any) -> Any:
    """`(SELECT count(*) FROM <table> WHERE ...)`: an index range count."""
    return select(func.count()).where(*conditions).scalar_subquery()


def period_start(moment: datetime, by: str) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if by == "hour":
        return moment
    return moment.replace(hour=0) if by == "day" else moment.replace(day=1, hour=0)


def next_period(start: datetime, by: str) -> datetime:
    if by != "month":
        return start + timedelta(hours=1 if by == "hour" else 24)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def periods(lower: datetime, end: datetime, by: str) -> list[tuple[datetime, datetime, datetime]]:
    """(nominal start, start, stop) of each hour/day/month meeting [lower, end), clipped to
    it so that a window's edges are respected."""
    if by not in PERIODS:
        raise AuditArgumentError(f"unknown period {by!r} (known: {', '.join(PERIODS)})")
    bounds = []
    start = period_start(lower, by)
    while start < end:
        stop = next_period(start, by)
        bounds.append((start, max(start, lower), min(stop, end)))
        if len(bounds) > MAX_PERIODS:
            raise AuditArgumentError(
                f"more than {MAX_PERIODS:,} periods; narrow the window with --since/--until "
                "or use a coarser --by"
            )
        start = stop
    return bounds


def window(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    return [
        *([column >= since] if since is not None else []),
        *([column < until] if until is not None else []),
    ]
