"""How the CLI prints ledger data: aligned tables for people, stable JSON, JSON lines and
CSV for machines. Pure functions of the records; no ledger access."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from daemon.models import Item, ItemStatus, OutputRecord

if TYPE_CHECKING:
    from daemon.ledger.audit import Event, History, Percentiles, Stats, Step
    from daemon.ledger.nodes import NodeReport
    from daemon.ledger.requeue import Requeued

OUTCOME_ORDER = (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED)
EVENT_FIELDS = (
    "event_id",
    "item_id",
    "path",
    "rev",
    "at",
    "event",
    "from_status",
    "to_status",
    "actor",
    "since_previous_s",
    "since_start_s",
    "detail",
)
EXPORT_EVENT_FIELDS = (*EVENT_FIELDS[:-3], "detail")
RESULT_FIELDS = ("id", "path", "previous_status", "status", "restored_from", "note")
NODE_FIELDS = ("node", "state", "last_heartbeat", "started", "host", "pid", "claims", "moves",
               "lister", "schema", "version")  # fmt: skip
LIST_FIELDS = (
    "id",
    "path",
    "rev",
    "content_hash",
    "status",
    "attempts",
    "engine",
    "job_id",
    "output_path",
    "archived_path",
    "error",
    "discovered_at",
    "started_at",
    "finished_at",
    "archived_at",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def _csv_cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False) if value else ""
    return _cell(value)


def item_record(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "path": item.path,
        "rev": item.rev,
        "content_hash": item.content_hash,
        "status": item.status.value,
        "attempts": item.attempts,
        "engine": item.engine,
        "job_id": item.job_id,
        "output_path": item.output_path,
        "archived_path": item.archived_path,
        "error": item.last_error,
        "discovered_at": _cell(item.discovered_at) or None,
        "started_at": _cell(item.started_at) or None,
        "finished_at": _cell(item.finished_at) or None,
        "archived_at": _cell(item.archived_at) or None,
    }


def node_record(report: NodeReport) -> dict[str, Any]:
    """One node for `cutoutd nodes`."""
    return {
        "node": report.name,
        "state": "alive" if report.alive else "expired",
        "last_heartbeat": _cell(report.heartbeat_at),
        "started": _cell(report.started_at),
        "host": report.host,
        "pid": report.pid,
        "claims": report.claims,
        "moves": report.moves,
        "lister": report.lister,
        "schema": report.schema_revision,
        "version": report.code_version,
    }


def write_records(
    records: Sequence[dict[str, Any]], fmt: str, out: TextIO, columns: Sequence[str]
) -> None:
    if fmt == "json":
        json.dump(list(records), out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.DictWriter(
            out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in r.items()} for r in records)
    else:
        rows = [[_cell(r.get(c)) for c in columns] for r in records]
        widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
        out.write(
            "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
            + "\n"
        )
        for row in rows:
            out.write(
                "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
            )


def duration(seconds: float | None) -> str:
    """`850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`, `3 d 04 h`."""
    if seconds is None:
        return ""
    sign, value = ("-" if seconds < 0 else ""), abs(seconds)
    if value < 60:
        return f"{sign}{value * 1000:.0f} ms" if value < 1 else f"{sign}{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    if minutes < 60:
        return f"{sign}{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{sign}{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{sign}{days} d {hours:02d} h"


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def event_record(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "item_id": event.item_id,
        "at": _cell(event.at),
        "event": event.event,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "actor": event.actor,
        "detail": event.detail,
    }


def output_record(output: OutputRecord) -> dict[str, Any]:
    return {
        "slot": output.slot,
        "path": f"output/{output.path}",
        "bytes": output.bytes,
        "written_at": _cell(output.written_at) or None,
    }


def step_record(step: Step) -> dict[str, Any]:
    return {
        **event_record(step.event),
        "since_previous_s": _seconds(step.since_previous),
        "since_start_s": _seconds(step.since_start),
    }


def exported_event(event: Event, path: str, rev: str) -> dict[str, Any]:
    record = event_record(event)
    return {
        "event_id": record.pop("event_id"),
        "item_id": record.pop("item_id"),
        "path": path,
        "rev": rev,
        **record,
    }


def write_history(history: History, out: TextIO) -> None:
    item = history.item
    out.write(
        f"#{item.id}  {item.path}  rev {item.rev}  {item.status}"
        f"  (engine {item.engine or '-'}, attempts {item.attempts})\n"
    )
    outputs = [f"output/{o.path}" for o in history.outputs if o.written_at is not None]
    if not outputs and item.output_path:
        outputs = [f"output/{item.output_path}"]
    where = [
        f"{k}: {v}"
        for k, v in (
            ("outputs" if len(outputs) > 1 else "output", ", ".join(outputs)),
            ("input now in", item.archived_path),
            ("error", item.last_error),
        )
        if v
    ]
    if where:
        out.write("  " + "   ".join(where) + "\n")
    rows = []
    for step in history.steps():
        event = step.event
        change = f"{event.from_status or ''} -> {event.to_status}" if event.to_status else ""
        detail = ", ".join(f"{k}={v}" for k, v in sorted(event.detail.items()))
        rows.append(
            {
                "at": event.at,
                "event": event.event,
                "status": change.strip(),
                "+step": duration(_seconds(step.since_previous)),
                "+total": duration(_seconds(step.since_start)),
                "actor": event.actor,
                "detail": detail,
            }
        )
    buffer = io.StringIO()
    write_records(
        rows, "table", buffer, ("at", "event", "status", "+step", "+total", "actor", "detail")
    )
    out.write("".join(f"  {line}\n" for line in buffer.getvalue().splitlines()))


def _percentiles_record(values: Percentiles) -> dict[str, Any]:
    return {
        "count": values.count,
        "sampled": values.sampled,
        "p50_s": None if values.p50 is None else round(values.p50, 3),
        "p95_s": None if values.p95 is None else round(values.p95, 3),
    }


def stats_record(stats: Stats) -> dict[str, Any]:
    return {
        "since": _cell(stats.since) or None,
        "until": _cell(stats.until) or None,
        "counts": {status.value: count for status, count in stats.counts.items()},
        "processed": stats.processed,
        "first_finished_at": _cell(stats.first_finished) or None,
        "last_finished_at": _cell(stats.last_finished) or None,
        "images_per_hour": None
        if stats.images_per_hour is None
        else round(stats.images_per_hour, 2),
        "latency": _percentiles_record(stats.latency),
        "engine_latency": _percentiles_record(stats.engine_latency),
        "engine_submissions": sum(stats.submissions.values()),
        "submissions": stats.submissions,
        "duplicates_skipped": stats.duplicates_skipped,
        "failures": [{"reason": reason, "count": count} for reason, count in stats.failures],
        "by": stats.by,
        "periods": [
            {
                "start": _cell(b.start),
                **{s.value: n for s, n in b.outcomes.items()},
                "submissions": b.submissions,
            }
            for b in stats.buckets
        ],
    }


def _period(start: datetime, by: str | None) -> str:
    return start.strftime({"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}.get(by or "", "%Y-%m"))


def write_stats(stats: Stats, out: TextIO) -> None:
    scope = " ".join(
        f"{w} {_cell(t)}" for w, t in (("from", stats.since), ("until", stats.until)) if t
    )
    first, last = _cell(stats.first_finished) or "-", _cell(stats.last_finished) or "-"
    out.write(f"{scope or 'all time'} (first finish {first}, last {last})\n\n")
    lines = [
        (status.value + ("" if status.is_terminal else " (now)"), f"{count:,}")
        for status, count in stats.counts.items()
    ]
    rate = stats.images_per_hour
    lines += [
        ("processed", f"{stats.processed:,}"),
        ("images per hour", "-" if rate is None else f"{rate:,.1f}"),
    ]
    for label, values in (
        ("latency p50/p95", stats.latency),
        ("engine p50/p95", stats.engine_latency),
    ):
        sample = f" (from a sample of {values.sampled:,})" if values.sampled < values.count else ""
        lines.append(
            (label, f"{duration(values.p50) or '-'} / {duration(values.p95) or '-'}{sample}")
        )
    billed = ", ".join(f"{n:,} {e}" for e, n in stats.submissions.items())
    lines += [
        ("engine submissions", f"{sum(stats.submissions.values()):,} ({billed})"),
        ("skipped duplicates", f"{stats.duplicates_skipped:,} (engine runs saved)"),
    ]
    width = max(len(label) for label, _ in lines)
    out.writelines(f"{label.ljust(width)}  {value}\n" for label, value in lines)
    out.write("  latency: discovered -> output written; engine: claimed -> succeeded\n")
    _write_failures(stats.failures, out)
    _write_periods(stats, out)


def _write_failures(failures: Sequence[tuple[str, int]], out: TextIO, top: int = 10) -> None:
    if not failures:
        return
    rows = list(failures[:top])
    if len(failures) > top:
        rows.append((f"({len(failures) - top} other reasons)", sum(n for _, n in failures[top:])))
    width = max(len(f"{count:,}") for _, count in rows)
    out.write("\nfailures by reason\n")
    out.writelines(f"  {count:>{width},}  {reason}\n" for reason, count in rows)


def _write_periods(stats: Stats, out: TextIO) -> None:
    if not stats.buckets:
        return
    header = ("period", *(s.value for s in OUTCOME_ORDER), "submissions")
    table = [
        [
            _period(b.start, stats.by),
            *(f"{b.outcomes[s]:,}" for s in OUTCOME_ORDER),
            f"{b.submissions:,}",
        ]
        for b in stats.buckets
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    out.write(f"\nby {stats.by}\n")
    for row in ([h.upper() for h in header], *table):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.write("  " + "  ".join(cells) + "\n")


def requeued_record(result: Requeued) -> dict[str, Any]:
    item = result.item
    note = "the daemon records the restored file as a new revision" if result.superseded else ""
    return {
        "id": item.id,
        "path": item.path,
        "previous_status": result.previous.value,
        "status": item.status.value,
        "restored_from": result.restored_from,
        "note": note,
    }


def stream_records(records: Iterator[dict[str, Any]], fmt: str, columns: Sequence[str]) -> int:
    """One line per record, written as it comes (constant memory)."""
    out = sys.stdout
    if fmt == "csv":
        writer = csv.DictWriter(
            out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        for record in records:
            writer.writerow({k: _csv_cell(v) for k, v in record.items()})
    else:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
    return 0
