"""Command line: argument parsing, exit codes, and the commands (output formatting lives in
`daemon.output`). No logic.

Exit codes: 0 success; 1 a problem (for `run --once`: some images failed); 2 bad
arguments; 75 `run --once` could not make some archive/failed moves in time; 69 a required service or engine is unavailable; 77 credentials rejected;
78 configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

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
from daemon.output import (
    EVENT_FIELDS,
    EXPORT_EVENT_FIELDS,
    LIST_FIELDS,
    NODE_FIELDS,
    RESULT_FIELDS,
    exported_event,
    item_record,
    node_record,
    output_record,
    requeued_record,
    stats_record,
    step_record,
    stream_records,
    write_history,
    write_records,
    write_stats,
)

if TYPE_CHECKING:  # the ledger (SQLAlchemy) loads only for the commands that need it
    from daemon.ledger.audit import ItemFilter, LedgerAudit
    from daemon.ledger.requeue import Requeued, Requeuer

EX_USAGE = 2
EX_TEMPFAIL = 75  # `run --once`: inputs whose archive/failed move could not be made yet
EX_UNAVAILABLE = 69
log = logging.getLogger("daemon.cli")
ENGINES = ("local", "photoshop")
SORTS = ("newest", "oldest", "path")
PERIODS = ("hour", "day", "month")
LATENCY_SAMPLE = 10_000  # daemon.ledger.audit.LATENCY_SAMPLE, for the help text


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
    add_node_commands(commands, common)
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
    ledger_commands.add_parser(
        "migrate",
        parents=[common],
        help="upgrade the ledger's schema (PostgreSQL: once, before upgraded nodes claim)",
    )


def add_node_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    nodes = commands.add_parser(
        "nodes",
        parents=[common],
        help="the nodes sharing the ledger: heartbeats, claims, the lister",
    )
    _format_argument(nodes, "table", "json", "csv", default=None)


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


# -- commands -----------------------------------------------------------------------------


def command_run(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.service import Service, install_signal_handlers
    from daemon.terminal import TerminalProgress, human_terminal

    progress: TerminalProgress | None = None
    if human_terminal(settings.log.format):
        progress = TerminalProgress(lambda: waiting(service.ledger.counts()))
    service = Service(settings, observers=[progress] if progress else [])
    install_signal_handlers(service)
    try:
        with progress or contextlib.nullcontext():
            summary = service.run_once() if args.once else None
            if not args.once:
                service.run_forever()
        if service.fatal:
            raise service.fatal
    finally:
        service.close()
    if summary is None:
        return 0
    print(summary.line())
    if summary.unmoved:
        return EX_TEMPFAIL
    return 1 if summary.counts.get(ItemStatus.FAILED) else 0


def waiting(counts: dict[ItemStatus, int]) -> int:
    return counts[ItemStatus.PENDING] + counts[ItemStatus.PROCESSING]


def command_check(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.compose import describe_engine
    from daemon.service import Service

    service = Service(settings)
    try:
        service.ledger.migrate()
        root = service.storage.inspect_root()
        print(f"config:  {settings.config_path or 'built-in defaults'}: valid")
        print(f"storage: {root.location}")
        if not root.exists and root.elsewhere:
            print(
                f"root:    {root.root} does not exist here, but a folder of that name exists in "
                f'the {root.elsewhere} namespace: set [dropbox] path_root = "{root.elsewhere}" '
                "to use it (nothing was created)"
            )
            return 1
        print(f"root:    {root.root} {'exists' if root.exists else 'does not exist: created'}")
        service.storage.ensure_layout()
        for engine in service.engines:
            engine.start()
        counts = service.ledger.counts()
        hardware = [describe_engine(engine) for engine in service.engines]
    finally:
        service.close()
    print(f"folders: {service.storage.describe()}: input/ output/ archive/ failed/ ready")
    for kind, runs_on in zip(settings.engine_kinds, hardware, strict=True):
        print(f"engine:  {kind}: ready{f' on {runs_on}' if runs_on else ''}")
    for profile in settings.profiles:
        outputs = ", ".join(f"{s.folder or '.'}/*.{s.format.extension}" for s in profile.outputs)
        print(f"profile: {profile.name}: {', '.join(profile.match)} -> {outputs}")
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
    from daemon.compose import open_ledger_reader
    from daemon.ledger.audit import AuditArgumentError, LedgerAudit

    audit = LedgerAudit(open_ledger_reader(settings))
    try:
        with _usage_errors(AuditArgumentError):
            yield audit
    finally:
        audit.close()


@contextmanager
def _usage_errors(kind: type[Exception]) -> Iterator[None]:
    """Errors of `kind` were caused by the user's arguments: exit 2 with their message."""
    try:
        yield
    except kind as exc:
        raise UsageError(str(exc)) from None


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
            {
                **item_record(h.item),
                "outputs": [output_record(o) for o in h.outputs],
                "events": [step_record(s) for s in h.steps()],
            }
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


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


@contextmanager
def _open_requeuer(settings: Settings) -> Iterator[Requeuer]:
    from daemon.compose import build_storage, ledger_url, open_ledger_reader
    from daemon.ledger import Ledger
    from daemon.ledger.audit import AuditArgumentError
    from daemon.ledger.requeue import Requeuer

    open_ledger_reader(settings).close()  # says so clearly when there is no ledger yet
    actor = _actor()
    requeuer = Requeuer(Ledger(ledger_url(settings), node_id=actor), build_storage(settings), actor)
    try:
        with _usage_errors(AuditArgumentError):
            yield requeuer
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


def command_ledger_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.compose import open_ledger
    from daemon.ledger.database import current_revision, head_revision

    ledger = open_ledger(settings)
    try:
        before = current_revision(ledger.engine)
        ledger.migrate()
        after = current_revision(ledger.engine)
    finally:
        ledger.close()
    where = ledger.describe()
    if before == after:
        print(f"ledger:  {where}: schema {after}, current (this code needs {head_revision()})")
    else:
        print(f"ledger:  {where}: schema {before or 'none'} -> {after}")
    return 0


def command_nodes(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.compose import open_ledger

    ledger = open_ledger(settings, create=False)
    try:
        reports = ledger.node_reports()
    finally:
        ledger.close()
    records = [node_record(r) for r in reports]
    write_records(records, _output_format(args), sys.stdout, NODE_FIELDS)
    if not records:
        print("cutoutd: no node has registered on this ledger", file=sys.stderr)
    return 0


def command_auth_dropbox(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.compose import authorize_dropbox_interactively

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
    ("ledger", "migrate"): command_ledger_migrate,
    ("nodes",): command_nodes,
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
    for message in settings.deprecations:
        log.warning("%s", message, extra={"event": "config.deprecated"})
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
