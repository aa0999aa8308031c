"""What each notification says: `text` that Slack, Mattermost and Teams incoming webhooks
render (plain text with light markdown), and the same facts as structured fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MAX_LISTED = 20  # failures named one by one in a message; the rest are counted


@dataclass(frozen=True, slots=True)
class Failure:
    path: str
    reason: str
    item_id: int


@dataclass(frozen=True, slots=True)
class Alert:
    event: str  # failed, degraded, recovered, digest
    title: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body: `text` for the chat, the rest for machines."""
        return {"text": self.text, "event": self.event, "title": self.title, **self.fields}


def failed_alert(failures: list[Failure]) -> Alert:
    count = len(failures)
    title = f"cutoutd: {count} image{'s' if count != 1 else ''} failed"
    lines = [f"• {f.path}: {f.reason}" for f in failures[:MAX_LISTED]]
    if count > MAX_LISTED:
        lines.append(f"… and {count - MAX_LISTED} more (`cutoutd ledger list --status failed`)")
    return Alert(
        "failed",
        title,
        f"*{title}*\n" + "\n".join(lines),
        {
            "count": count,
            "failures": [{"path": f.path, "reason": f.reason, "id": f.item_id} for f in failures],
        },
    )


def degraded_alert(reason: str, since: datetime) -> Alert:
    title = "cutoutd is degraded"
    return Alert(
        "degraded",
        title,
        f"*{title}*: {reason} (since {since:%Y-%m-%d %H:%M %Z})",
        {"reason": reason, "since": since.isoformat()},
    )


def recovered_alert(reason: str, since: datetime, now: datetime) -> Alert:
    minutes = max((now - since).total_seconds() / 60, 0)
    title = "cutoutd recovered"
    return Alert(
        "recovered",
        title,
        f"*{title}* after {minutes:.0f} min: {reason} is over",
        {"reason": reason, "since": since.isoformat(), "minutes": round(minutes, 1)},
    )


@dataclass(frozen=True, slots=True)
class Digest:
    """A day's figures, read from the ledger by the composition root."""

    succeeded: int
    failed: int
    skipped: int
    submissions: int  # engine submissions (what Adobe bills)
    failures: list[tuple[str, int]]  # reason -> count


def digest_alert(digest: Digest, day: datetime, engine: str) -> Alert:
    title = f"cutoutd daily digest, {day:%Y-%m-%d}"
    lines = [
        f"*{title}*",
        f"{digest.succeeded} succeeded, {digest.failed} failed, {digest.skipped} skipped",
    ]
    if engine == "photoshop":
        lines.append(f"{digest.submissions} Adobe submissions")
    lines += [f"• {count}× {reason}" for reason, count in digest.failures[:MAX_LISTED]]
    return Alert(
        "digest",
        title,
        "\n".join(lines),
        {
            "succeeded": digest.succeeded,
            "failed": digest.failed,
            "skipped": digest.skipped,
            "submissions": digest.submissions,
            "failures": [{"reason": r, "count": c} for r, c in digest.failures],
        },
    )
