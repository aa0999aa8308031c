"""Logging: JSON lines to stderr (python-json-logger) or plain text, secrets scrubbed."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from daemon.secrets import redact

RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class RedactingFilter(logging.Filter):
    """Scrub registered secrets and URL query strings from the message, the context, and
    tracebacks (an exception's text may quote a signed URL or a token)."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:  # formatted once here; formatters print `exc_text` as it is
            record.exc_text = redact(self._tracebacks.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in RESERVED and isinstance(value, str):
                setattr(record, key, redact(value))
        if not hasattr(record, "event"):
            record.event = record.name.rsplit(".", 1)[-1] + "." + record.levelname.lower()
        return True


class TextFormatter(logging.Formatter):
    """`time level event message key=value ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        context = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in RESERVED and key not in ("event", "asctime")
        )
        return f"{base} {context}".rstrip()


SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class JournalPriorityFormatter(logging.Formatter):
    """Under systemd (`$JOURNAL_STREAM` set), prefix each line with `<N>`, the syslog
    priority: journald strips it and files the line at that level (`journalctl -p err`)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        return f"<{priority}>{self.inner.format(record)}"


def configure_logging(level: str = "INFO", format: str = "json") -> None:
    """`format`: "json", "text", or "auto" (the friendly terminal of daemon.terminal on a
    TTY outside systemd, JSON lines otherwise)."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if format == "auto":
        from daemon.terminal import HumanHandler, human_terminal

        if human_terminal(format):
            handler = HumanHandler()
        format = "json"
    handler.addFilter(RedactingFilter())
    if format == "json":
        formatter = JsonFormatter(
            "%(levelname)s %(name)s %(event)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)-7s %(event)s %(message)s")
    if os.environ.get("JOURNAL_STREAM"):
        formatter = JournalPriorityFormatter(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "alembic", "dropbox"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # APScheduler tells of every run, and warns of runs skipped while a pass is under way or
    # late past their grace: discovery coalesces those on purpose. Its errors still show.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, root.level))


def context(event: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the stable event key plus context fields."""
    return {"event": event, **fields}
