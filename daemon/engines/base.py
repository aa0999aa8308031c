"""The Engine port."""

from __future__ import annotations

from typing import Protocol

from daemon.models import EngineJob, EngineResult


class Engine(Protocol):
    """Turns one input image into one cutout at the input's full resolution: a `Cutout`
    (the upright sRGB image and its alpha) or an `EncodedCutout` (a PNG with alpha, decoded
    when the outputs are rendered). Every output is rendered from it (daemon.rendering).

    Raises `PermanentItemError` for inputs that can never succeed, `TransientError`
    (or `RateLimitedError`) for trouble worth retrying, `AuthError` for bad credentials.
    """

    @property
    def name(self) -> str:
        """`local` or `photoshop`: recorded in the ledger for each revision."""
        ...

    def start(self) -> None:
        """Load models / check credentials once. Raises EngineUnavailableError or AuthError."""
        ...

    def cut_out(self, job: EngineJob) -> EngineResult: ...

    def close(self) -> None: ...
