"""The audit's value types (filters, events, histories, statistics) and the pure
arithmetic over them (percentiles, reasons). No database access here."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from daemon.models import Item, ItemStatus, OutputRecord

OUTCOMES = (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED)


class AuditArgumentError(ValueError):
    """A usage error found against the ledger: no such path or id, a revision not in the
    state the command needs, too many periods."""


class Sort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    PATH = "path"


@dataclass(frozen=True, slots=True)
class ItemFilter:
    statuses: tuple[ItemStatus, ...] = ()
    path_glob: str | None = None
    since: datetime | None = None  # discovered at or after
    until: datetime | None = None  # discovered before
    engine: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    item_id: int
    at: datetime
    event: str
    from_status: str | None
    to_status: str | None
    actor: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Step:
    """An event with the time since the previous event and since discovery."""

    event: Event
    since_previous: timedelta | None
    since_start: timedelta


@dataclass(frozen=True, slots=True)
class History:
    item: Item
    events: tuple[Event, ...]
    outputs: tuple[OutputRecord, ...] = ()

    def steps(self) -> list[Step]:
        if not self.events:
            return []
        start = self.events[0].at
        previous: datetime | None = None
        steps = []
        for event in self.events:
            gap = event.at - previous if previous is not None else None
            steps.append(Step(event, gap, event.at - start))
            previous = event.at
        return steps


@dataclass(frozen=True, slots=True)
class Percentiles:
    count: int  # revisions measured
    sampled: int  # values the percentiles come from (== count when exact)
    p50: float | None
    p95: float | None


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime  # the period's first instant (UTC)
    outcomes: dict[ItemStatus, int]
    submissions: int


@dataclass(frozen=True, slots=True)
class Stats:
    since: datetime | None
    until: datetime | None
    counts: dict[ItemStatus, int]  # outcomes finished in the window; pending/processing now
    first_finished: datetime | None
    last_finished: datetime | None
    images_per_hour: float | None
    latency: Percentiles  # discovery -> output written
    engine_latency: Percentiles  # claimed -> succeeded (the last attempt)
    submissions: dict[str, int]  # submitted / resubmitted events: what Adobe bills
    failures: list[tuple[str, int]]  # reason -> count, most frequent first
    duplicates_skipped: int  # engine submissions saved
    by: str | None = None
    buckets: list[Bucket] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return sum(self.counts.get(status, 0) for status in OUTCOMES)


def to_event(row: Any) -> Event:
    detail = json.loads(row.detail) if row.detail else {}
    return Event(
        row.id, row.item_id, row.at, row.event, row.from_status, row.to_status, row.actor, detail
    )


def interpolate(value_at: Callable[[int], float], rank: float) -> float:
    """The value at a fractional rank, linear between its neighbours (numpy's default)."""
    low, high = math.floor(rank), math.ceil(rank)
    return value_at(low) + (value_at(high) - value_at(low)) * (rank - low)


def percentiles(values: Sequence[float], count: int) -> Percentiles:
    ordered = sorted(values)
    if not ordered:
        return Percentiles(count, 0, None, None)
    last = len(ordered) - 1
    p50, p95 = (interpolate(ordered.__getitem__, last * p) for p in (0.5, 0.95))
    return Percentiles(count, len(ordered), p50, p95)


def normalize_reason(reason: str | None) -> str:
    return re.sub(r"0x[0-9a-fA-F]+", "0x…", reason or "(no reason recorded)")
