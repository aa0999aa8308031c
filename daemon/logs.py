"""Logging: JSON lines to stderr (python-json-logger) or plain text, secrets scrubbed."""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from daemon.secrets import redact

RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class RedactingFilter(logging.Filter):
    """Scrub registered secrets and URL query strings from the message and context."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
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


def configure_logging(level: str = "INFO", format: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    formatter: logging.Formatter
    if format == "json":
        formatter = JsonFormatter(
            "%(levelname)s %(name)s %(event)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)-7s %(event)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("apscheduler", "urllib3", "alembic", "dropbox"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def context(event: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the stable event key plus context fields."""
    return {"event": event, **fields}
