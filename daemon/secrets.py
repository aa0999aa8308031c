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
# A path with a query string but no scheme, as `requests` names it in its errors
# ("Max retries exceeded with url: /results/x?sig=..."): the query is as secret there.
_BARE_QUERY = re.compile(r"(?<![\w.~:/%-])(/[^\s\"'<>?]*)\?[^\s\"'<>()]+")
# A long opaque path segment (the token in a Dropbox temporary link's path): 20+ URL-safe
# characters mixing letters and digits, or 32+ of them whatever they hold (a random token
# sometimes has no digit at all) ...
_OPAQUE_SEGMENT = re.compile(
    r"(?:(?=[A-Za-z_-]*\d)(?=[\d_-]*[A-Za-z])[A-Za-z0-9_-]{20,}|[A-Za-z0-9_-]{32,})"
)
# ... unless it is a UUID (a job id), an identifier rather than a secret.
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def _redact_path(path: str) -> str:
    return "/".join(
        "<redacted>" if _OPAQUE_SEGMENT.fullmatch(part) and not _UUID.fullmatch(part) else part
        for part in path.split("/")
    )


def redact_url(url: str) -> str:
    """Drop the query string, fragment and credentials of a URL (temporary and signed
    URLs carry their secret there), and redact long opaque path parts (a temporary link
    may carry it in its path)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    redacted = urlunsplit((parts.scheme, host, _redact_path(parts.path), query, ""))
    return redacted + "?" if url.endswith("?") and not query else redacted


def redact(text: str) -> str:
    """Scrub registered secrets, and the query strings and opaque path parts of URLs,
    from free text."""
    for secret in sorted(_registered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "<redacted>")
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _BARE_QUERY.sub(lambda m: f"{_redact_path(m.group(1))}?<redacted>", text)
