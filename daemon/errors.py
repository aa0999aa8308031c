"""The exception taxonomy. Adapters translate vendor errors into these, once, at their edge."""

from __future__ import annotations

from collections.abc import Sequence

EX_CONFIG = 78  # sysexits.h: configuration error; the systemd unit does not restart on it
EX_NOPERM = 77  # credentials revoked or wrong


class CutoutdError(Exception):
    """Base of every error cutoutd raises on purpose."""


class ConfigError(CutoutdError):
    """The configuration is invalid; every problem is listed as `dotted.key: what is wrong`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class TransientError(CutoutdError):
    """Network trouble, 5xx, a busy database: try again later with backoff."""


class RateLimitedError(TransientError):
    """The remote side asked us to slow down; `retry_after` is in seconds when it said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnreachableError(TransientError):
    """The remote service cannot be reached at all (connection refused or reset): not this
    item's fault, so an outage, however long, never uses up an item's last attempt."""


class PermanentItemError(CutoutdError):
    """This image cannot be processed (not an image, rejected, job failed). Others go on."""


class ItemGoneError(CutoutdError):
    """The input revision no longer exists in storage (deleted or replaced)."""


class CursorResetError(CutoutdError):
    """The storage cursor is no longer valid: list again from scratch."""


class AuthError(CutoutdError):
    """Credentials are revoked or wrong. Say so plainly and stop."""


class LostClaimError(CutoutdError):
    """A compare-and-set found someone else's state; drop the item quietly."""


class CursorMovedError(CutoutdError):
    """Another node stored a newer cursor first: this page was rolled back."""


class NodeConflictError(CutoutdError):
    """Another live node uses this node_id: two processes must not share one."""


class SchemaMismatchError(TransientError):
    """The ledger's schema is not the one this code was written for: the node claims
    nothing until `cutoutd ledger migrate` (or its own upgrade) makes them match."""


class EngineUnavailableError(CutoutdError):
    """The configured engine cannot start (missing package, missing model file)."""
