"""Command line: argument parsing, exit codes and output formatting. No logic.

Exit codes: 0 success; 1 a problem (for `run --once`: some images failed); 2 bad
arguments; 69 a required service or engine is unavailable; 77 credentials rejected;
78 configuration error.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO

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

EX_USAGE = 2
EX_UNAVAILABLE = 69
log = logging.getLogger("daemon.cli")
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
    ledger = commands.add_parser("ledger", parents=[common], help="audit the ledger")
    ledger_commands = ledger.add_subparsers(
        dest="ledger_command", required=True, metavar="COMMAND", parser_class=Parser
    )
    listing = ledger_commands.add_parser("list", parents=[common], help="list input revisions")
    listing.add_argument(
        "--status", action="append", help="filter by status (repeat or comma-separate)"
    )
    listing.add_argument("--since", help="discovered at or after (date or relative: 24h, 7d)")
    listing.add_argument("--until", help="discovered before (date or relative)")
    listing.add_argument("--limit", type=int, default=None, help="at most this many rows")
    listing.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default=None,
        help="output format (default: table on a terminal, json otherwise)",
    )
    auth = commands.add_parser("auth", parents=[common], help="set up credentials")
    auth_commands = auth.add_subparsers(
        dest="auth_command", required=True, metavar="SERVICE", parser_class=Parser
    )
    auth_commands.add_parser(
        "dropbox", parents=[common], help="get a Dropbox refresh token (OAuth PKCE)"
    )
    return parser


# -- output -------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


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
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in records)
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


def command_ledger_list(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.service import open_ledger_reader

    statuses = parse_statuses(args.status)
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    reader = open_ledger_reader(settings)
    try:
        items = reader.list_items(statuses=statuses, since=since, until=until, limit=args.limit)
    finally:
        reader.close()
    columns = (
        LIST_FIELDS
        if fmt != "table"
        else ("id", "status", "attempts", "path", "output_path", "discovered_at", "error")
    )
    write_records([item_record(i) for i in items], fmt, sys.stdout, columns)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
