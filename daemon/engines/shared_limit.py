"""Adobe's submission limit kept in the ledger, for nodes that share a PostgreSQL ledger.

Same interface as daemon.engines.ratelimit.SubmitLimiter (`slot(stop)`, `pause(s)`), same
rule; the slots live in a store every node sees (daemon.ledger.slots.SubmitSlots, chosen in
daemon.compose). A slot whose `finish` cannot be recorded (the ledger is down) simply runs
out at its expiry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from daemon.engines.ratelimit import Clock
from daemon.errors import TransientError

log = logging.getLogger(__name__)


class SlotStore(Protocol):
    def try_acquire(self) -> tuple[int | None, float]:
        """(slot id, 0) when granted, else (None, seconds to wait)."""
        ...

    def finish(self, slot: int) -> None: ...

    def pause(self, seconds: float) -> None: ...


class SharedSubmitLimiter:
    """At most `limit` submissions in any `period`, counted across every node."""

    def __init__(self, store: SlotStore, clock: Clock) -> None:
        self._store, self._clock = store, clock

    @contextmanager
    def slot(self, stop: threading.Event) -> Iterator[None]:
        granted = self._acquire(stop)
        try:
            yield
        finally:
            try:
                self._store.finish(granted)
            except TransientError as exc:
                log.warning("cannot record a finished submission slot: %s", exc)

    def pause(self, seconds: float) -> None:
        """Every node waits `seconds` (the server said Retry-After)."""
        self._store.pause(seconds)

    def _acquire(self, stop: threading.Event) -> int:
        while True:
            granted, delay = self._store.try_acquire()
            if granted is not None:
                return granted
            if self._clock.wait(stop, delay):
                raise TransientError("stopped while waiting for a submission slot")
