"""The worker pool: threads that claim due revisions and take each through the pipeline,
give a claim back when its outcome cannot be recorded, and drain on stop.

`heartbeat` is the hook where a node keeps its claims alive: when given, a thread calls
it every `heartbeat_every` seconds with the revisions in flight (see daemon.service)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from daemon.errors import AuthError, TransientError
from daemon.ledger_port import LedgerPort
from daemon.logs import context
from daemon.models import Item
from daemon.pipeline import Pipeline

log = logging.getLogger(__name__)
Heartbeat = Callable[[Sequence[Item]], None]  # told the claims in flight, to renew them
WAIT_AT_MOST = 5.0  # an idle worker looks for due work at least this often


class WorkerPool:
    """`count` worker threads over one pipeline. `wake` is set when work may have become
    due (discovery found some, a requeue, a stop); `on_fatal` gets an AuthError."""

    def __init__(
        self,
        ledger: LedgerPort,
        pipeline: Pipeline,
        *,
        count: int,
        poll_interval: float,
        stop: threading.Event,
        wake: threading.Event,
        on_fatal: Callable[[BaseException], None],
        heartbeat: Heartbeat | None = None,
        heartbeat_every: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.pipeline = pipeline
        self.count = count
        self.poll_interval = poll_interval
        self.stop = stop
        self.wake = wake
        self.on_fatal = on_fatal
        self.heartbeat = heartbeat
        self.heartbeat_every = heartbeat_every
        self.in_flight: dict[int, Item] = {}
        self.threads: list[threading.Thread] = []
        self._changes = threading.Condition()  # guards in_flight, _busy and _generation
        self._busy = 0  # workers claiming or processing
        self._generation = 0  # counts claims taken and ended, for wait_until_idle
        self._claims_failing = threading.Event()  # warn once per ledger outage, not per worker

    # -- threads --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads (and the heartbeat, if any); a second call does nothing."""
        if self.threads:
            return
        self.threads = [
            threading.Thread(target=self._worker_loop, name=f"worker-{n}", daemon=True)
            for n in range(self.count)
        ]
        if self.heartbeat is not None:
            beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            beat.start()
        for thread in self.threads:
            thread.start()

    def stopped_threads(self) -> list[str]:
        """The names of worker threads that died (a bug; /healthz and the watchdog tell)."""
        return [thread.name for thread in self.threads if not thread.is_alive()]

    def claimed(self) -> list[Item]:
        with self._changes:
            return list(self.in_flight.values())

    def _worker_loop(self) -> None:
        while not self.stop.is_set():
            self.work_until_idle()
            try:
                due = self.ledger.next_due_at() if not self.stop.is_set() else None
            except TransientError:
                due = None
            wait = self.poll_interval if due is None else (due - datetime.now(UTC)).total_seconds()
            if self.wake.wait(min(max(wait, 0.05), WAIT_AT_MOST)):
                self.wake.clear()

    def _heartbeat_loop(self) -> None:
        assert self.heartbeat is not None
        while not self.stop.wait(self.heartbeat_every):
            try:
                self.heartbeat(self.claimed())
            except TransientError as exc:
                log.warning("heartbeat failed: %s", exc, extra=context("heartbeat.retry"))

    # -- the work -------------------------------------------------------------------------

    def work_until_idle(self) -> None:
        """Claim and process due revisions until none is left or a stop is asked."""
        while not self.stop.is_set():
            with self._changes:
                self._busy += 1
            try:
                item = self._claim()
                if item is None or not self._work_on(item):
                    return
            finally:
                with self._changes:
                    self._busy -= 1
                    self._generation += 1
                    self._changes.notify_all()

    def _work_on(self, item: Item) -> bool:
        """Process one claimed revision; False when this worker should stop for now."""
        with self._changes:
            self.in_flight[item.id] = item
        try:
            self.pipeline.process(item)
        except AuthError as exc:
            self.on_fatal(exc)
            return False
        except TransientError as exc:  # its outcome could not be recorded
            self._give_back(item, exc)
            return False
        finally:
            with self._changes:
                self.in_flight.pop(item.id, None)
        return True

    def _claim(self) -> Item | None:
        try:
            item = self.ledger.claim_next()
        except TransientError as exc:  # the ledger is busy or its disk full: later
            if not self._claims_failing.is_set():
                self._claims_failing.set()
                log.warning("cannot claim work: %s", exc, extra=context("ledger.retry"))
            return None
        if self._claims_failing.is_set():
            self._claims_failing.clear()
            log.info("the ledger works again", extra=context("ledger.recovered"))
        return item

    def _give_back(self, item: Item, exc: TransientError) -> None:
        """The ledger failed while `item` was claimed: release it as soon as the ledger
        works again, so it is retried without a restart (its job resumes, output overwrites)."""
        log.warning(
            "cannot record the outcome for %s; will put it back: %s",
            item.path,
            exc,
            extra=context("ledger.retry", path=item.path),
        )
        delay = 0.5
        while not self.stop.is_set():
            try:
                self.pipeline.release(item, f"put back after a ledger failure ({exc})")
                return
            except TransientError:
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)

    # -- waiting --------------------------------------------------------------------------

    def wait_until_idle(self) -> None:
        """Return once no worker holds or is taking a claim and nothing is due now (the
        stop condition of `run --once`), or on stop."""
        while not self.stop.is_set():
            with self._changes:
                while self._busy and not self.stop.is_set():
                    self._changes.wait(1.0)
                generation = self._generation
            due = self.ledger.next_due_at()
            with self._changes:
                quiet = self._busy == 0 and self._generation == generation
                if quiet and (due is None or due > self.ledger.clock()):
                    return
                self.wake.set()  # due work and every worker asleep: wake them
                self._changes.wait(0.05)

    def drain(self, timeout: float) -> None:
        """Let in-flight revisions finish within `timeout` s, then release the rest.
        The caller has set `stop` (so no worker claims again)."""
        self.wake.set()
        deadline = time.monotonic() + timeout
        with self._changes:
            while self.in_flight and time.monotonic() < deadline:
                self._changes.wait(min(0.05, max(deadline - time.monotonic(), 0.0)))
            left = list(self.in_flight.values())
        for item in left:
            self.pipeline.release(item, "still running when the drain timeout ran out")
        for thread in self.threads:  # each sees the stop at its next look: a moment
            thread.join(timeout=1.0)
        self.threads = [thread for thread in self.threads if thread.is_alive()]
