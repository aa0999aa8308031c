"""`[[notify]]` tables: where notifications go (webhook or e-mail) and which events.

Secrets never live here: a webhook's URL (Slack's carry a secret in the path) comes from
the credential named by `url_credential`, an SMTP password from `password_credential`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemon.config_reader import TableReader, at_least_one, non_negative, positive

EVENTS = ("failed", "degraded", "recovered", "digest")
SECURITY = ("starttls", "tls", "none")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class NotifySettings:
    kind: str  # "webhook" or "email"
    name: str  # how records and logs call this target: `webhook-1`, `email-2`
    events: tuple[str, ...] = EVENTS
    url_credential: str = ""
    smtp_host: str = ""
    smtp_port: int = 0  # 0: 587 for starttls and none, 465 for tls
    security: str = "starttls"
    username: str = ""
    password_credential: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    batch_minutes: float = 5.0
    digest_time: str = "08:00"  # local time of the daily digest
    degraded_after: float = 300.0  # seconds Dropbox/Adobe may be unreachable before `degraded`
    rate_limit_storm: int = 20  # 429 answers within 5 minutes that count as a storm
    timeout: float = 10.0

    @property
    def port(self) -> int:
        return self.smtp_port or (465 if self.security == "tls" else 587)

    @property
    def digest_at(self) -> tuple[int, int]:
        hour, minute = self.digest_time.split(":")
        return int(hour), int(minute)


def _credential_name(value: Any) -> str | None:
    ok = _CREDENTIAL_NAME.fullmatch(value)
    return None if ok else f"must name a credential (like SLACK_WEBHOOK_URL), got {value!r}"


def _clock_time(value: Any) -> str | None:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if match and int(match[1]) < 24 and int(match[2]) < 60:
        return None
    return f"must be a local time like '08:00', got {value!r}"


def _events(value: Any) -> str | None:
    unknown = [v for v in value if v not in EVENTS]
    if not value or unknown or not all(isinstance(v, str) for v in value):
        return f"must be a non-empty list of {', '.join(map(repr, EVENTS))}, got {value!r}"
    return None


def _read_one(raw: Mapping[str, Any], number: int, problems: list[str]) -> NotifySettings | None:
    section = f"notify[{number}]"
    r = TableReader({section: raw}, section, problems)
    kind = r.choice("kind", "", ("webhook", "email"))
    common: dict[str, Any] = {
        "events": tuple(r.get("events", list(EVENTS), list, _events)),
        "batch_minutes": r.get("batch_minutes", 5.0, float, non_negative),
        "digest_time": r.get("digest_time", "08:00", str, _clock_time),
        "degraded_after": r.get("degraded_after", 300.0, float, positive),
        "rate_limit_storm": r.get("rate_limit_storm", 20, int, at_least_one),
        "timeout": r.get("timeout", 10.0, float, positive),
    }
    if "url" in raw:
        r.seen.add("url")
        r.problem(
            "url", "a webhook URL is a secret: put it in a credential, name it in url_credential"
        )
    if kind == "webhook":
        common["url_credential"] = r.get("url_credential", "", str, _credential_name)
        if not common["url_credential"]:
            r.problem("url_credential", "required: the credential holding the webhook URL")
    elif kind == "email":
        common.update(_read_email(r))
    r.finish()
    if not kind:
        if "kind" not in raw:
            r.problem("kind", "required: 'webhook' or 'email'")
        return None
    return NotifySettings(kind=kind, name=f"{kind}-{number}", **common)


def _read_email(r: TableReader) -> dict[str, Any]:
    recipients: tuple[Any, ...] = tuple(r.get("recipients", [], list))
    values: dict[str, Any] = {
        "smtp_host": r.get("smtp_host", "", str),
        "smtp_port": r.get("smtp_port", 0, int, non_negative),
        "security": r.choice("security", "starttls", SECURITY),
        "username": r.get("username", "", str),
        "password_credential": r.get("password_credential", "", str, _credential_name),
        "sender": r.get("sender", "", str),
        "recipients": recipients,
    }
    for key in ("smtp_host", "sender"):
        if not values[key]:
            r.problem(key, "required for kind = 'email'")
    if not recipients or not all(isinstance(v, str) and "@" in v for v in recipients):
        r.problem("recipients", "required: a list of e-mail addresses")
    if values["username"] and not values["password_credential"]:
        r.problem(
            "password_credential", "required with username: the credential holding the password"
        )
    return values


def read_notify(data: Mapping[str, Any], problems: list[str]) -> tuple[NotifySettings, ...]:
    raw = data.get("notify", [])
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        problems.append("notify: must be [[notify]] tables")
        return ()
    targets = (_read_one(table, number, problems) for number, table in enumerate(raw, 1))
    return tuple(t for t in targets if t is not None)
