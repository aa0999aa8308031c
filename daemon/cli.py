"""Command line: argument parsing, exit codes and output formatting. No logic.

Exit codes: 0 success; 1 a problem (for `run --once`: some images failed); 2 bad
arguments; 69 a required service or engine is unavailable; 77 credentials rejected;
78 configuration error.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from daemon import __version__
from daemon.config import Settings, load_settings
from daemon.errors import (
    EX_CONFIG,
    EX_NOPERM,
    AuthError,
    ConfigError,
    CutoutdError,
    EngineUnavailableError,
    TransientError,
)
from daemon.logs import configure_logging
from daemon.models import Item, ItemStatus

if TYPE_CHECKING:  # the ledger (SQLAlchemy) loads only for the commands that need it
    from daemon.ledger.audit import (
        Event,
        History,
        ItemFilter,
        LedgerAudit,
        Percentiles,
        Stats,
        Step,
    )
    from daemon.ledger.requeue import Requeued, Requeuer

EX_USAGE = 2
EX_UNAVAILABLE = 69
log = logging.getLogger("daemon.cli")
ENGINES = ("local", "photoshop")
SORTS = ("newest", "oldest", "path")
PERIODS = ("hour", "day", "month")
LATENCY_SAMPLE = 10_000  # daemon.ledger.audit.LATENCY_SAMPLE, for the help text
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


class UsageError(Exception):
    """Bad arguments: exit code 2 with the message."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """`2026-11-01`, `2026-11-01T12:00`, or relative: `30m`, `24h`, `7d`, `2w` ago."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
        return now - timedelta(**{unit: int(match[1])})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"not a date or a relative time like 24h or 7d: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_statuses(values: Sequence[str] | None) -> list[ItemStatus]:
    statuses: list[ItemStatus] = []
    for value in values or ():
        for name in filter(None, value.split(",")):
            try:
                statuses.append(ItemStatus(name.strip().lower()))
            except ValueError:
                known = ", ".join(s.value for s in ItemStatus)
                raise UsageError(f"unknown status {name!r} (known: {known})") from None
    return statuses


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="TOML configuration file (default: built-in defaults)",
    )
    parser = Parser(
        prog="cutoutd",
        description="Hands-off background removal for a watched folder.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"cutoutd {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    run = commands.add_parser(
        "run", parents=[common], help="run the daemon (until SIGTERM, or --once)"
    )
    run.add_argument(
        "--once", action="store_true", help="process everything present, print a summary, exit"
    )
    commands.add_parser(
        "check", parents=[common], help="validate config, model, ledger and folders"
    )
    add_ledger_commands(commands, common)
    add_requeue_commands(commands, common)
    auth = commands.add_parser("auth", parents=[common], help="set up credentials")
    auth_commands = auth.add_subparsers(
        dest="auth_command", required=True, metavar="SERVICE", parser_class=Parser
    )
    auth_commands.add_parser(
        "dropbox", parents=[common], help="get a Dropbox refresh token (OAuth PKCE)"
    )
    return parser


def _window_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--since", help=f"{what} at or after (a date, or relative: 24h, 7d)")
    parser.add_argument("--until", help=f"{what} before (a date, or relative)")


def _format_argument(parser: argparse.ArgumentParser, *choices: str, default: str | None) -> None:
    default_help = default or "table on a terminal, json otherwise"
    parser.add_argument(
        "--format",
        choices=choices,
        default=default,
        help=f"output format (default: {default_help})",
    )


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status", action="append", help="only these statuses (repeat or comma-separate)"
    )
    parser.add_argument(
        "--path", metavar="GLOB", help="input paths matching this glob (* and ?, any case)"
    )
    parser.add_argument("--engine", choices=ENGINES, help="only revisions for this engine")
    _window_arguments(parser, "discovered")


def add_ledger_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    ledger = commands.add_parser("ledger", parents=[common], help="audit the ledger")
    ledger_commands = ledger.add_subparsers(
        dest="ledger_command", required=True, metavar="COMMAND", parser_class=Parser
    )
    listing = ledger_commands.add_parser("list", parents=[common], help="list input revisions")
    _filter_arguments(listing)
    listing.add_argument(
        "--sort",
        choices=SORTS,
        default="newest",
        help="order by discovery (newest, oldest) or by path",
    )
    listing.add_argument("--reverse", action="store_true", help="reverse the order")
    listing.add_argument("--limit", type=int, default=None, help="at most this many rows")
    _format_argument(listing, "table", "json", "csv", default=None)
    show = ledger_commands.add_parser(
        "show", parents=[common], help="every revision of a file, with its event history"
    )
    show.add_argument(
        "ref", metavar="PATH|ID", help="input path (or archive/..., failed/...) or id"
    )
    _format_argument(show, "table", "json", "csv", default=None)
    stats = ledger_commands.add_parser(
        "stats", parents=[common], help="throughput, latency, submissions, failures"
    )
    _window_arguments(stats, "finished (submissions: made)")
    stats.add_argument("--by", choices=PERIODS, help="also break down per hour, day or month")
    stats.add_argument(
        "--exact",
        action="store_true",
        help="latency percentiles from every revision (sorts them all: seconds at 1M), "
        f"not from a sample of about {LATENCY_SAMPLE:,}",
    )
    _format_argument(stats, "table", "json", default=None)
    export = ledger_commands.add_parser(
        "export", parents=[common], help="stream revisions (or events) as CSV or JSON lines"
    )
    _filter_arguments(export)
    export.add_argument(
        "--events",
        action="store_true",
        help="one record per event instead of per revision (--since/--until "
        "then apply to the event time)",
    )
    _format_argument(export, "jsonl", "csv", default="jsonl")


def add_requeue_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    retry = commands.add_parser(
        "retry",
        parents=[common],
        help="requeue failed images, moving them back from failed/",
        description="Requeue a failed image (PATH or ID), or every failed one (--status "
        "failed, optionally --since/--until). The input moves back from failed/ into input/.",
    )
    retry.add_argument("ref", metavar="PATH|ID", nargs="?", help="input path or revision id")
    retry.add_argument("--status", help="with no PATH: requeue every revision in this status")
    _window_arguments(retry, "discovered")
    _format_argument(retry, "table", "json", "csv", default=None)
    reprocess = commands.add_parser(
        "reprocess",
        parents=[common],
        help="run a succeeded image again, moving it back from archive/",
    )
    reprocess.add_argument("ref", metavar="PATH|ID", help="input path or revision id")
    _format_argument(reprocess, "table", "json", "csv", default=None)


# -- output -------------------------------------------------------------------------------


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
    where = [
        f"{k}: {v}"
        for k, v in (
            ("output", item.output_path and f"output/{item.output_path}"),
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


# -- commands -----------------------------------------------------------------------------


def command_run(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.service import Service, install_signal_handlers

    service = Service(settings)
    install_signal_handlers(service)
    try:
        if args.once:
            summary = service.run_once()
            if service.fatal:
                raise service.fatal
            print(summary.line())
            return 1 if summary.counts.get(ItemStatus.FAILED) else 0
        service.run_forever()
        if service.fatal:
            raise service.fatal
        return 0
    finally:
        service.close()


def command_check(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.service import Service

    service = Service(settings)
    try:
        service.ledger.migrate()
        service.storage.ensure_layout()
        service.engine.start()
        counts = service.ledger.counts()
    finally:
        service.close()
    print(f"config:  {settings.config_path or 'built-in defaults'}: valid")
    print(f"storage: {service.storage.describe()}: input/ output/ archive/ failed/ ready")
    print(f"engine:  {settings.engine.kind}: ready")
    print(f"ledger:  {service.ledger.describe()}: {sum(counts.values())} revisions")
    return 0


def _when(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be before --until")
    return since, until


def _item_filter(args: argparse.Namespace) -> ItemFilter:
    from daemon.ledger.audit import ItemFilter

    since, until = _when(args)
    return ItemFilter(tuple(parse_statuses(args.status)), args.path, since, until, args.engine)


def _output_format(args: argparse.Namespace) -> str:
    return str(args.format or ("table" if sys.stdout.isatty() else "json"))


@contextmanager
def _open_audit(settings: Settings) -> Iterator[LedgerAudit]:
    """The read-only audit view; ledger lookups that fail on the user's input exit 2."""
    from daemon.ledger.audit import AuditArgumentError, LedgerAudit
    from daemon.service import open_ledger_reader

    audit = LedgerAudit(open_ledger_reader(settings))
    try:
        yield audit
    except AuditArgumentError as exc:
        raise UsageError(str(exc)) from None
    finally:
        audit.close()


def command_ledger_list(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.ledger.audit import Sort

    flt = _item_filter(args)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    fmt = _output_format(args)
    with _open_audit(settings) as audit:
        items = audit.list_items(flt, sort=Sort(args.sort), reverse=args.reverse, limit=args.limit)
    columns = (
        LIST_FIELDS
        if fmt != "table"
        else ("id", "status", "attempts", "path", "output_path", "discovered_at", "error")
    )
    write_records([item_record(i) for i in items], fmt, sys.stdout, columns)
    return 0


def command_ledger_show(settings: Settings, args: argparse.Namespace) -> int:
    fmt = _output_format(args)
    with _open_audit(settings) as audit:
        histories = audit.show(args.ref)
    if fmt == "json":
        records = [
            {**item_record(h.item), "events": [step_record(s) for s in h.steps()]}
            for h in histories
        ]
        write_records(records, "json", sys.stdout, ())
    elif fmt == "csv":
        rows = [
            {**step_record(s), "path": h.item.path, "rev": h.item.rev}
            for h in histories
            for s in h.steps()
        ]
        write_records(rows, "csv", sys.stdout, EVENT_FIELDS)
    else:
        for number, history in enumerate(histories):
            sys.stdout.write("\n" if number else "")
            write_history(history, sys.stdout)
    return 0


def command_ledger_stats(settings: Settings, args: argparse.Namespace) -> int:
    since, until = _when(args)
    fmt = _output_format(args)
    with _open_audit(settings) as audit:
        stats = audit.stats(since, until, args.by, exact=args.exact)
    if fmt == "json":
        json.dump(stats_record(stats), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        write_stats(stats, sys.stdout)
    return 0


def command_ledger_export(settings: Settings, args: argparse.Namespace) -> int:
    flt = _item_filter(args)
    if args.events and (flt.statuses or flt.path_glob or flt.engine):
        raise UsageError("--events takes only --since/--until")
    columns: Sequence[str] = EXPORT_EVENT_FIELDS if args.events else LIST_FIELDS
    with _open_audit(settings) as audit:
        if args.events:
            records = (
                exported_event(e, path, rev)
                for e, path, rev in audit.export_events(flt.since, flt.until)
            )
        else:
            records = (item_record(item) for item in audit.export_items(flt))
        return stream_records(records, args.format, columns)


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


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


@contextmanager
def _open_requeuer(settings: Settings) -> Iterator[Requeuer]:
    from daemon.ledger import Ledger
    from daemon.ledger.audit import AuditArgumentError
    from daemon.ledger.requeue import Requeuer
    from daemon.service import build_storage, ledger_url, open_ledger_reader

    open_ledger_reader(settings).close()  # says so clearly when there is no ledger yet
    actor = _actor()
    requeuer = Requeuer(Ledger(ledger_url(settings), node_id=actor), build_storage(settings), actor)
    try:
        yield requeuer
    except AuditArgumentError as exc:
        raise UsageError(str(exc)) from None
    finally:
        requeuer.close()


def command_retry(settings: Settings, args: argparse.Namespace) -> int:
    if args.ref and (args.status or args.since or args.until):
        raise UsageError("give either PATH|ID or --status failed [--since/--until], not both")
    if not args.ref and not args.status:
        raise UsageError("give a PATH or ID to retry, or --status failed to retry every failure")
    statuses = parse_statuses([args.status] if args.status else [])
    if statuses and statuses != [ItemStatus.FAILED]:
        raise UsageError(
            "retry takes --status failed only (`cutoutd reprocess` runs a succeeded image again)"
        )
    since, until = _when(args)
    with _open_requeuer(settings) as requeuer:
        if args.ref:
            items = [requeuer.latest(args.ref, ItemStatus.FAILED)]
        else:
            items = requeuer.failed_revisions(since, until)
        return report_requeued(items, requeuer.requeue_failed, _output_format(args))


def command_reprocess(settings: Settings, args: argparse.Namespace) -> int:
    with _open_requeuer(settings) as requeuer:
        item = requeuer.latest(args.ref, ItemStatus.SUCCEEDED)
        return report_requeued([item], requeuer.reprocess, _output_format(args))


def report_requeued(items: Sequence[Item], requeue: Callable[[Item], Requeued], fmt: str) -> int:
    """Requeue each; print what was done (stdout) and what could not be (stderr)."""
    from daemon.ledger.requeue import RequeueError

    done: list[dict[str, Any]] = []
    failed = 0
    for item in items:
        try:
            done.append(requeued_record(requeue(item)))
        except RequeueError as exc:
            failed += 1
            print(f"cutoutd: cannot requeue {item.path} (#{item.id}): {exc}", file=sys.stderr)
    write_records(done, fmt, sys.stdout, RESULT_FIELDS)
    if not items:
        print("cutoutd: nothing to retry", file=sys.stderr)
    return 1 if failed else 0


def command_auth_dropbox(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.service import authorize_dropbox_interactively

    lines = authorize_dropbox_interactively(read_code=lambda url: _ask_code(url))
    print("# Put these in the service's environment file (mode 0600) or systemd credentials:")
    for key, value in lines.items():
        print(f"{key}={value}")
    return 0


def _ask_code(url: str) -> str:
    print(f"1. Open this URL and allow access:\n   {url}", file=sys.stderr)
    print("2. Paste the authorization code here: ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip()


COMMANDS: dict[tuple[str, ...], Callable[[Settings, argparse.Namespace], int]] = {
    ("run",): command_run,
    ("check",): command_check,
    ("ledger", "list"): command_ledger_list,
    ("ledger", "show"): command_ledger_show,
    ("ledger", "stats"): command_ledger_stats,
    ("ledger", "export"): command_ledger_export,
    ("retry",): command_retry,
    ("reprocess",): command_reprocess,
    ("auth", "dropbox"): command_auth_dropbox,
}


def _command_key(args: argparse.Namespace) -> tuple[str, ...]:
    sub = getattr(args, "ledger_command", None) or getattr(args, "auth_command", None)
    return (args.command, sub) if sub else (args.command,)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"cutoutd: {exc}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(settings.log.level, settings.log.format)
    try:
        return COMMANDS[_command_key(args)](settings, args)
    except UsageError as exc:
        print(f"cutoutd: error: {exc}", file=sys.stderr)
        return EX_USAGE
    except ConfigError as exc:
        print(f"cutoutd: {exc}", file=sys.stderr)
        return EX_CONFIG
    except AuthError as exc:
        log.critical("%s", exc, extra={"event": "service.auth_failed"})
        print(f"cutoutd: credentials rejected: {exc}", file=sys.stderr)
        return EX_NOPERM
    except EngineUnavailableError as exc:
        print(f"cutoutd: engine unavailable: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (TransientError, CutoutdError) as exc:
        print(f"cutoutd: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cutoutd ledger export | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
