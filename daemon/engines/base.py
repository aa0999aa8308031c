"""The Engine port."""

from __future__ import annotations

from typing import Protocol

from daemon.models import CutoutResult, EngineJob


class Engine(Protocol):
    """Turns one input image into one cutout.

    Raises `PermanentItemError` for inputs that can never succeed, `TransientError`
    (or `RateLimitedError`) for trouble worth retrying, `AuthError` for bad credentials.
    """

    @property
    def name(self) -> str:
        """`local` or `photoshop`: recorded in the ledger for each revision."""
        ...

    @property
    def needs_link(self) -> bool:
        """True when the engine fetches the input by URL (the storage must give links)."""
        ...

    def start(self) -> None:
        """Load models / check credentials once. Raises EngineUnavailableError or AuthError."""
        ...

    def cut_out(self, job: EngineJob) -> CutoutResult: ...

    def close(self) -> None: ...
