"""Secrets come from the environment or systemd credentials, never from the config file.

Also the helpers that keep them out of logs, the ledger and CLI output.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_registered: set[str] = set()


def read_secret(name: str) -> str | None:
    """`$NAME` from the environment, else the systemd credential `$CREDENTIALS_DIRECTORY/NAME`.

    Every value read is registered so that `redact()` can scrub it from any text.
    """
    value = os.environ.get(name)
    if not value:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if directory:
            file = Path(directory) / name
            if file.is_file():
                value = file.read_text(encoding="utf-8").strip()
    if value:
        register_secret(value)
    return value or None


def register_secret(value: str) -> None:
    """Remember a secret value (an access token, say) so that `redact()` removes it."""
    if len(value) >= 6:
        _registered.add(value)


_URL = re.compile(r"https?://[^\s\"'<>]+")


def redact_url(url: str) -> str:
    """Drop the query string, fragment and credentials of a URL (temporary and signed
    URLs carry their secret there), and shorten long opaque path parts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def redact(text: str) -> str:
    """Scrub registered secrets and the query strings of URLs from free text."""
    for secret in sorted(_registered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return _URL.sub(lambda m: redact_url(m.group(0)), text)
