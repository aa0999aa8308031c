"""The health reporter: what /healthz answers, the status line systemd shows (STATUS=,
with the watchdog ping), and the `degraded` trouble that notifications report."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from daemon.errors import TransientError
from daemon.ledger_port import LedgerPort
from daemon.models import ItemStatus
from daemon.notify import Notifier
from daemon.secrets import redact
from daemon.storage.base import Storage
from daemon.watcher import ChangeWatcher
from daemon.workers import WorkerPool

HEALTHY_POLL_AGE_MIN = 10.0  # /healthz tolerates 3 poll intervals, but never less than this


class HealthReporter:
    """Reads the workers and the watcher; tells systemd and answers /healthz."""

    def __init__(
        self,
        ledger: LedgerPort,
        storage: Storage,
        notifier: Notifier,
        workers: WorkerPool,
        watcher: ChangeWatcher,
        *,
        poll_every: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.storage = storage
        self.notifier = notifier
        self.workers = workers
        self.watcher = watcher
        self.poll_every = poll_every
        self.monotonic = monotonic
        self.started_time = time.time()
        self.credential_error: str | None = None

    def credentials_rejected(self, error: BaseException) -> None:
        self.credential_error = redact(str(error))

    # -- telling systemd ------------------------------------------------------------------

    def ping_watchdog(self) -> None:
        """WATCHDOG=1 from the discovery loop itself, and only while every worker thread
        lives: a stuck pass or a dead worker stops the pings and systemd restarts us."""
        if not self.workers.stopped_threads():
            self.notifier.watchdog()

    def report(self) -> None:
        """After each discovery pass: the watchdog ping with STATUS=."""
        if not self.notifier.enabled:
            return
        try:
            status = self.status_line(self.ledger.counts())
        except TransientError as exc:
            status = f"ledger unavailable: {exc}"
        if not self.workers.stopped_threads():
            self.notifier.watchdog(status)
        else:
            self.notifier.status(status)

    def status_line(self, counts: dict[ItemStatus, int]) -> str:
        """`1203 done, 3 in flight, 2 failed, 5 pending, last poll 4 s ago`."""
        done = counts[ItemStatus.SUCCEEDED] + counts[ItemStatus.SKIPPED]
        last = self.watcher.last_poll_at
        poll = "no poll yet" if last is None else f"last poll {self.monotonic() - last:.0f} s ago"
        return (
            f"{done} done, {len(self.workers.in_flight)} in flight, "
            f"{counts[ItemStatus.FAILED]} failed, {counts[ItemStatus.PENDING]} pending, {poll}"
        )

    # -- monitoring -----------------------------------------------------------------------

    def problem(self) -> str | None:
        """None while healthy; otherwise the reason, for /healthz."""
        if self.credential_error is not None:
            return f"credentials rejected: {self.credential_error}"
        if self.workers.stop.is_set():
            return "stopping"
        dead = self.workers.stopped_threads()
        if dead:
            return f"worker threads stopped: {', '.join(dead)}"
        last = self.watcher.last_poll_at
        if last is None:
            return "no successful poll yet"
        age = self.monotonic() - last
        limit = max(3 * self.poll_every, HEALTHY_POLL_AGE_MIN)
        if age > limit:
            return f"last successful poll {age:.0f} s ago (limit {limit:.0f} s)"
        return None

    def trouble(self, now: datetime, threshold: float) -> str | None:
        """For `degraded` notifications: credentials rejected, or storage unreachable
        (no successful poll) for more than `threshold` seconds."""
        if self.credential_error is not None:
            return f"credentials rejected: {self.credential_error}"
        age = now.timestamp() - (self.watcher.last_poll_time or self.started_time)
        if age > threshold:
            return (
                f"{self.storage.describe()} unreachable: no successful poll for {age / 60:.0f} min"
            )
        return None
