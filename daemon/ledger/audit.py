"""The operator's view of the ledger: list, show, stats and export.

Reads go through a `LedgerReader` opened with `writer=False`: on SQLite (WAL) they take
no lock a writer waits on, so they are safe while the daemon runs. Every query here is
plain SQL that runs on SQLite and PostgreSQL; the one expression that differs (seconds
between two timestamps) is compiled per dialect in `audit_sql.py`.

Scale: 1,000,000 revisions. `stats` counts from indexes (see 0002_audit_indexes) and
reads table rows only for the failures in its window and for a latency sample: the
percentiles are exact up to LATENCY_SAMPLE successes, and beyond that come from a
systematic sample of about that many (every k-th id, k a prime), which the result says;
`exact=True` sorts every value instead (seconds at 1,000,000).

Value types live in `audit_values.py`, the portable SQL in `audit_sql.py`; both are
re-exported here. The requeue commands (retry, reprocess) live in `requeue.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    column,
    func,
    literal,
    literal_column,
    select,
    values,
)
from sqlalchemy.sql import ColumnElement

from daemon.ledger.audit_sql import (
    count_of,
    glob_prefix,
    glob_to_like,
    periods,
    seconds_between,
    window,
)
from daemon.ledger.audit_values import (
    OUTCOMES,
    interpolate,
    normalize_reason,
    percentiles,
    to_event,
)
from daemon.ledger.audit_values import AuditArgumentError as AuditArgumentError
from daemon.ledger.audit_values import Bucket as Bucket
from daemon.ledger.audit_values import Event as Event
from daemon.ledger.audit_values import History as History
from daemon.ledger.audit_values import ItemFilter as ItemFilter
from daemon.ledger.audit_values import Percentiles as Percentiles
from daemon.ledger.audit_values import Sort as Sort
from daemon.ledger.audit_values import Stats as Stats
from daemon.ledger.audit_values import Step as Step
from daemon.ledger.outputs import outputs_of
from daemon.ledger.queries import LedgerReader, to_item
from daemon.ledger.schema import EventRow, ItemRow, OutputRow, UtcDateTime
from daemon.models import Area, Item, ItemStatus

LATENCY_SAMPLE = 10_000
SUBMISSION_EVENTS = ("submitted", "resubmitted")
# Revisions skipped as a duplicate (only dedupe writes this reason). Literal SQL, and no
# status term, so that both databases count them from the partial index ix_items_duplicates.
DUPLICATE_SKIP = (ItemRow.last_error.like(literal_column("'duplicate of %'")),)


def sample_stride(count: int, target: int | None = None) -> int:
    """1 when `count` fits the sample; else the smallest prime >= count / target (a prime
    step does not line up with periodic id patterns)."""
    stride = math.ceil(count / (target or LATENCY_SAMPLE))
    if stride <= 1:
        return 1
    while any(stride % d == 0 for d in range(2, math.isqrt(stride) + 1)):
        stride += 1
    return stride


# -- the read side ------------------------------------------------------------------------


class LedgerAudit:
    """List, show, stats and export over a ledger (read-only)."""

    def __init__(self, reader: LedgerReader) -> None:
        self.reader = reader
        self.dialect = reader.engine.dialect.name

    def close(self) -> None:
        self.reader.close()

    def _filtered(self, query: Select[Any], flt: ItemFilter) -> Select[Any]:
        if flt.statuses:
            query = query.where(ItemRow.status.in_([s.value for s in flt.statuses]))
        query = query.where(*window(ItemRow.discovered_at, flt.since, flt.until))
        if flt.engine:
            query = query.where(ItemRow.engine == flt.engine)
        if flt.path_glob:
            lowered = func.lower(ItemRow.path)
            query = query.where(lowered.like(glob_to_like(flt.path_glob), escape="\\"))
            prefix = glob_prefix(flt.path_glob)
            if prefix and self.dialect == "sqlite" and ord(prefix[-1]) < 0x10FFFF:
                # byte-order range on ix_items_path_ci (exact: SQLite compares as BINARY)
                upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
                query = query.where(lowered >= prefix, lowered < upper)
        return query

    def list_items(
        self,
        flt: ItemFilter = ItemFilter(),
        *,
        sort: Sort = Sort.NEWEST,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[Item]:
        columns: list[Any] = (
            [func.lower(ItemRow.path), ItemRow.id] if sort is Sort.PATH else [ItemRow.id]
        )
        descending = (sort is Sort.NEWEST) != reverse
        keys = [column.desc() if descending else column.asc() for column in columns]
        query = self._filtered(select(ItemRow), flt).order_by(*keys).limit(limit)
        with self.reader.transaction() as connection:
            return [to_item(row) for row in connection.execute(query)]

    # -- one file -------------------------------------------------------------------------

    def resolve(self, connection: Connection, ref: str) -> list[Item]:
        """`ID`/`#ID`: that revision. A path (relative to input/, or `input/...`,
        `archive/...`, `failed/...`, `output/...`): every revision of that file."""
        text = ref.strip()
        if re.fullmatch(r"#?\d+", text):
            row = connection.execute(select(ItemRow).where(ItemRow.id == int(text.lstrip("#"))))
            found = row.first()
            if found is not None:
                return [to_item(found)]
        keys = self._path_keys(connection, text)
        if not keys:
            raise AuditArgumentError(
                f"no revision of {ref!r} in the ledger (give a path relative to input/, or an id)"
            )
        rows = connection.execute(
            select(ItemRow).where(ItemRow.path_lower.in_(keys)).order_by(ItemRow.id)
        )
        return [to_item(row) for row in rows]

    def _path_keys(self, connection: Connection, text: str) -> list[str]:
        area, _, rest = text.partition("/")
        conditions: list[ColumnElement[bool]] = [
            ItemRow.path_lower == text,
            func.lower(ItemRow.path) == text.lower(),
        ]
        if area == Area.INPUT and rest:
            conditions += [ItemRow.path_lower == rest, func.lower(ItemRow.path) == rest.lower()]
        elif area in (Area.ARCHIVE, Area.FAILED):
            conditions.append(ItemRow.archived_path == text)
        elif area == Area.OUTPUT:
            named = OutputRow.path_lower.in_({rest, rest.lower()})
            written = select(OutputRow.item_id).where(named)
            conditions += [ItemRow.output_path == rest, ItemRow.id.in_(written)]
        for condition in conditions:
            keys = connection.scalars(select(ItemRow.path_lower).where(condition).distinct()).all()
            if keys:
                return list(keys)
        return []

    def show(self, ref: str) -> list[History]:
        with self.reader.transaction() as connection:
            items = self.resolve(connection, ref)
            rows = connection.execute(
                select(EventRow)
                .where(EventRow.item_id.in_([i.id for i in items]))
                .order_by(EventRow.item_id, EventRow.id)
            ).all()
            outputs = {item.id: tuple(outputs_of(connection, item.id)) for item in items}
        events: dict[int, list[Event]] = {item.id: [] for item in items}
        for row in rows:
            events[row.item_id].append(to_event(row))
        return [History(item, tuple(events[item.id]), outputs[item.id]) for item in items]

    # -- statistics -----------------------------------------------------------------------

    def stats(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        by: str | None = None,
        *,
        exact: bool = False,
    ) -> Stats:
        """Outcomes, latency and failures of revisions finished in [since, until);
        submissions made in it; pending/processing as they are now. Every count is an
        index range count, so the cost grows with the window, not with the whole ledger."""
        finished = window(ItemRow.finished_at, since, until)
        with self.reader.transaction() as connection:
            counts = self._counts(connection, finished)
            first, last = self._span(connection, finished)
            latency, engine = self._latency(
                connection, finished, counts[ItemStatus.SUCCEEDED], exact
            )
            submitted = [
                count_of(EventRow.event == e, *window(EventRow.at, since, until))
                for e in SUBMISSION_EVENTS
            ]
            submissions = dict(
                zip(SUBMISSION_EVENTS, connection.execute(select(*submitted)).one(), strict=True)
            )
            failures = self._failures(connection, finished)
            duplicates = connection.scalar(select(count_of(*DUPLICATE_SKIP, *finished)))
            buckets: list[Bucket] = []
            if by is not None:
                buckets = self._buckets(connection, since, until, by, first, last)
        processed = sum(counts[s] for s in OUTCOMES)
        rate = None
        if processed and first is not None and last is not None:
            now = self.reader.clock()
            end = min(until, now) if until else now if since else last
            rate = processed / (max((end - (since or first)).total_seconds(), 60.0) / 3600)
        return Stats(
            since=since,
            until=until,
            counts=counts,
            first_finished=first,
            last_finished=last,
            images_per_hour=rate,
            latency=latency,
            engine_latency=engine,
            submissions=submissions,
            failures=failures,
            duplicates_skipped=duplicates or 0,
            by=by,
            buckets=buckets,
        )

    def _counts(self, connection: Connection, finished: list[Any]) -> dict[ItemStatus, int]:
        """Outcomes finished in the window; pending and processing now."""
        probes = [
            count_of(ItemRow.status == s, *(finished if s in OUTCOMES else [])) for s in ItemStatus
        ]
        return dict(zip(ItemStatus, connection.execute(select(*probes)).one(), strict=True))

    def _span(
        self, connection: Connection, finished: list[Any]
    ) -> tuple[datetime | None, datetime | None]:
        """First and last finish in the window: per status, so each is one index probe."""
        probes = [
            select(aggregate(ItemRow.finished_at))
            .where(ItemRow.status == s, *finished)
            .scalar_subquery()
            for s in OUTCOMES
            for aggregate in (func.min, func.max)
        ]
        values = list(connection.execute(select(*probes)).one())
        firsts = [v for v in values[0::2] if v is not None]
        lasts = [v for v in values[1::2] if v is not None]
        return (min(firsts) if firsts else None, max(lasts) if lasts else None)

    def _latency(
        self, connection: Connection, finished: list[Any], count: int, exact: bool
    ) -> tuple[Percentiles, Percentiles]:
        """Exact up to LATENCY_SAMPLE succeeded revisions (or with `exact`); beyond, from
        every k-th id. Over the whole ledger those ids are generated and looked up (no
        index walk); within a window, the window's index range is walked."""
        durations = (
            seconds_between(ItemRow.discovered_at, ItemRow.finished_at),
            seconds_between(ItemRow.started_at, ItemRow.finished_at),
        )
        succeeded = (ItemRow.status == ItemStatus.SUCCEEDED, *finished)
        if exact:
            whole, engine_only = (self._exact(connection, d, succeeded) for d in durations)
            return whole, engine_only
        query = select(*durations).where(*succeeded)
        stride = sample_stride(count)
        if stride > 1 and finished:
            query = query.where(ItemRow.id % stride == 0)
        elif stride > 1:
            low, high = connection.execute(select(func.min(ItemRow.id), func.max(ItemRow.id))).one()
            ids = select(literal(low, Integer).label("id")).cte("sample", recursive=True)
            ids = ids.union_all(select(ids.c.id + stride).where(ids.c.id + stride <= high))
            query = query.join(ids, ItemRow.id == ids.c.id)
        rows = connection.execute(query).all()
        total = [whole for whole, _ in rows if whole is not None]
        engine = [engine_only for _, engine_only in rows if engine_only is not None]
        return percentiles(total, count), percentiles(engine, count)

    def _exact(self, connection: Connection, duration: Any, where: Sequence[Any]) -> Percentiles:
        """Percentiles from every value, sorted by the database and streamed: only the
        values at the wanted ranks are kept."""
        count = connection.scalar(select(func.count()).where(*where, duration.is_not(None))) or 0
        if not count:
            return Percentiles(0, 0, None, None)
        ranks = [(count - 1) * p for p in (0.5, 0.95)]
        wanted = {math.floor(r) for r in ranks} | {math.ceil(r) for r in ranks}
        found: dict[int, float] = {}
        query = select(duration).where(*where, duration.is_not(None)).order_by(duration)
        result = connection.execute(query.execution_options(yield_per=5000))
        try:
            for index, (value,) in enumerate(result):
                if index in wanted:
                    found[index] = value
                if len(found) == len(wanted):
                    break
        finally:
            result.close()
        return Percentiles(count, count, *(interpolate(found.__getitem__, r) for r in ranks))

    def _failures(self, connection: Connection, finished: list[Any]) -> list[tuple[str, int]]:
        rows = connection.execute(
            select(ItemRow.last_error, func.count())
            .where(ItemRow.status == ItemStatus.FAILED, *finished)
            .group_by(ItemRow.last_error)
        )
        merged: dict[str, int] = {}
        for reason, count in rows:
            key = normalize_reason(reason)
            merged[key] = merged.get(key, 0) + count
        return sorted(merged.items(), key=lambda pair: (-pair[1], pair[0]))

    def _buckets(
        self,
        connection: Connection,
        since: datetime | None,
        until: datetime | None,
        by: str,
        *finishes: datetime | None,
    ) -> list[Bucket]:
        """Per period: one index range count per outcome and for submissions (no scan)."""
        at = EventRow.at
        probes = [
            select(f(at)).where(EventRow.event == e, *window(at, since, until)).scalar_subquery()
            for e in SUBMISSION_EVENTS
            for f in (func.min, func.max)
        ]
        moments = [m for m in (*finishes, *connection.execute(select(*probes)).one()) if m]
        if not moments:
            return []
        end = until or max(moments) + timedelta(microseconds=1)
        bounds = periods(since or min(moments), end, by)
        table = (
            values(column("start", UtcDateTime()), column("stop", UtcDateTime()), name="periods")
            .data([(start, stop) for _, start, stop in bounds])
            .cte("periods")
        )

        def between(moment: Any) -> list[Any]:
            return [moment >= table.c.start, moment < table.c.stop]

        probes = [count_of(ItemRow.status == s, *between(ItemRow.finished_at)) for s in OUTCOMES]
        probes.append(count_of(EventRow.event.in_(SUBMISSION_EVENTS), *between(EventRow.at)))
        rows = connection.execute(select(table.c.start, *probes).order_by(table.c.start))
        return [
            Bucket(nominal, dict(zip(OUTCOMES, row[1:-1], strict=True)), row[-1])
            for (nominal, _, _), row in zip(bounds, rows, strict=True)
        ]

    # -- export ---------------------------------------------------------------------------

    def export_items(self, flt: ItemFilter = ItemFilter()) -> Iterator[Item]:
        """Every revision matching `flt`, oldest first, streamed (server-side cursor on
        PostgreSQL; SQLite steps its cursor), so memory stays flat at any size."""
        query = self._filtered(select(ItemRow), flt).order_by(ItemRow.id)
        with self.reader.transaction() as connection:
            for row in connection.execute(query.execution_options(yield_per=2000)):
                yield to_item(row)

    def export_events(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[tuple[Event, str, str]]:
        """Every event in [since, until) with its revision's path and rev, streamed."""
        query = (
            select(*EventRow.__table__.columns, ItemRow.path, ItemRow.rev)
            .join(ItemRow, ItemRow.id == EventRow.item_id)
            .where(*window(EventRow.at, since, until))
            .order_by(EventRow.id)
        )
        with self.reader.transaction() as connection:
            for row in connection.execute(query.execution_options(yield_per=2000)):
                yield to_event(row), row.path, row.rev
