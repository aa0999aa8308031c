"""Pacing for the Photoshop engine: an injectable clock and the shared submission limiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from daemon.errors import TransientError


class Clock(Protocol):
    """Monotonic time and interruptible waits; tests inject one that needs no sleeping."""

    def monotonic(self) -> float: ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait up to `seconds`; True when `stop` is set (return at once then)."""
        ...


class Limiter(Protocol):
    """What the Photoshop engine paces submissions with: SubmitLimiter (one process) or
    daemon.engines.shared_limit.SharedSubmitLimiter (every node on a PostgreSQL ledger)."""

    def slot(self, stop: threading.Event) -> AbstractContextManager[None]: ...

    def pause(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(max(seconds, 0.0))


@dataclass(slots=True)
class _Slot:
    finished_at: float | None = None


class SubmitLimiter:
    """At most `limit` submissions in any `period` seconds, shared by every thread.

    A slot counts from when it is granted until `period` after its request finished, so
    the server, which counts arrivals, never sees more than `limit` in one window.
    """

    def __init__(self, limit: int, period: float, clock: Clock) -> None:
        self._limit, self._period, self._clock = limit, period, clock
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._paused_until = 0.0

    @contextmanager
    def slot(self, stop: threading.Event) -> Iterator[None]:
        granted = self._acquire(stop)
        try:
            yield
        finally:
            with self._lock:
                granted.finished_at = self._clock.monotonic()

    def pause(self, seconds: float) -> None:
        """Grant nothing for `seconds` (the server said Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)

    def _acquire(self, stop: threading.Event) -> _Slot:
        while True:
            with self._lock:
                delay = self._delay(self._clock.monotonic())
                if delay <= 0:
                    granted = _Slot()
                    self._slots.append(granted)
                    return granted
            if self._clock.wait(stop, delay):
                raise TransientError("stopped while waiting for a submission slot")

    def _delay(self, now: float) -> float:
        self._slots = [
            s for s in self._slots if s.finished_at is None or s.finished_at > now - self._period
        ]
        if self._paused_until > now:
            return self._paused_until - now
        if len(self._slots) < self._limit:
            return 0.0
        finished = [s.finished_at for s in self._slots if s.finished_at is not None]
        return min(finished) + self._period - now if finished else min(self._period, 0.05)
