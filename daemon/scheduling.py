"""The discovery schedule: discovery passes as an APScheduler 3.x interval job on a
`BackgroundScheduler`. The first pass runs at once, then one every `interval` seconds; one
at a time (`max_instances=1`), late runs coalesced into one. `wake_now` (a longpoll change)
moves the next pass to now. With `hold_between_passes` (`run --once`) the job pauses after
each pass until the service names the next one (`run_in`).

Whoever waits for passes does so on a condition (`wait_for_pass`), signalled after each
pass and on `interrupt` (a stop). The only module that imports APScheduler."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

JOB_ID = "discover"


@dataclass(frozen=True, slots=True)
class PassResult:
    number: int  # 1 for the first pass of this run
    settling: int | None  # what the pass returned: files settling, None when it failed


def misfire_grace(interval: float) -> int:
    """A pass late by up to one interval (at least 1 s: APScheduler counts whole seconds)
    still runs; later than that, the next one is as good."""
    return max(1, math.ceil(interval))


class DiscoverySchedule:
    """Runs `run_pass` (which returns files still settling, None on failure) as the
    `discover` job of a BackgroundScheduler."""

    def __init__(self, run_pass: Callable[[], int | None], *, interval: float) -> None:
        self.run_pass = run_pass
        self.interval = interval
        self.scheduler: Any = None  # a BackgroundScheduler once started
        self._passed = threading.Condition()  # guards everything below
        self._last: PassResult | None = None
        self._hold = False
        self._running = False
        self._woken = False  # a wake came during a pass: run again right after it
        self._interrupted = False

    def start(self, *, hold_between_passes: bool = False) -> None:
        """Add the job (first run now) and start the scheduler's thread."""
        self._hold = hold_between_passes
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.scheduler.add_job(
            self._pass,
            IntervalTrigger(seconds=self.interval, timezone=UTC),
            id=JOB_ID,
            name="discovery pass",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=misfire_grace(self.interval),
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop the scheduler; a pass under way finishes first."""
        self.interrupt()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def jobs(self) -> list[Any]:
        """The scheduler's jobs (APScheduler `Job`s), for inspection."""
        return [] if self.scheduler is None else list(self.scheduler.get_jobs())

    # -- the job --------------------------------------------------------------------------

    def _pass(self) -> None:
        with self._passed:
            if self._interrupted:
                return
            self._running = True
        settling: int | None = None
        try:
            settling = self.run_pass()
        finally:
            with self._passed:
                self._running = False
                number = self._last.number + 1 if self._last is not None else 1
                self._last = PassResult(number, settling)
                if self._hold:
                    self._move_next_run(None)  # paused until run_in
                elif self._woken:
                    self._move_next_run(datetime.now(UTC))
                self._woken = False
                self._passed.notify_all()

    def _move_next_run(self, at: datetime | None) -> None:
        """Move the job's next run (None pauses it). Called with `_passed` held."""
        if self._interrupted or self.scheduler is None or not self.scheduler.running:
            return
        with contextlib.suppress(JobLookupError):  # the scheduler is shutting down
            self.scheduler.modify_job(JOB_ID, next_run_time=at)

    # -- steering -------------------------------------------------------------------------

    def wake_now(self) -> None:
        """Run the next pass now (storage reported a change); during a pass, right after
        it. Held passes (`run --once`) stay held."""
        with self._passed:
            if self._running:
                self._woken = True
            elif not self._hold:
                self._move_next_run(datetime.now(UTC))

    def run_in(self, seconds: float) -> None:
        """Run the next pass `seconds` from now (a held schedule resumes)."""
        with self._passed:
            self._move_next_run(datetime.now(UTC) + timedelta(seconds=max(seconds, 0.0)))

    def interrupt(self) -> None:
        """No pass starts from now on; wake whoever waits in `wait_for_pass`."""
        with self._passed:
            self._interrupted = True
            self._passed.notify_all()

    def wait_for_pass(self, after: int, timeout: float | None = None) -> PassResult | None:
        """Wait until a pass numbered above `after` has ended and return it; None once
        interrupted, or when `timeout` seconds ran out first."""
        with self._passed:
            ended = self._passed.wait_for(
                lambda: self._interrupted or (self._last is not None and self._last.number > after),
                timeout,
            )
            return None if self._interrupted or not ended else self._last

    @property
    def passes(self) -> int:
        """Passes ended so far."""
        with self._passed:
            return 0 if self._last is None else self._last.number
