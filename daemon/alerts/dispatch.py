"""Sending off the pipeline's threads: a queue and one thread, retries with exponential
backoff, and a record of every outcome in the ledger. A full queue drops the newest
message with a warning rather than blocking a worker."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from daemon.alerts.messages import Alert
from daemon.alerts.senders import Sender, SendError
from daemon.logs import context

log = logging.getLogger(__name__)
# (target, event, sent, attempts, title, error)
Record = Callable[[str, str, bool, int, str, str | None], None]
BACKLOG = 1000


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 5
    initial: float = 2.0  # seconds before the second attempt; doubled each time
    maximum: float = 120.0

    def delay(self, attempt: int) -> float:
        return float(min(self.initial * 2 ** (attempt - 1), self.maximum))


class Dispatcher:
    def __init__(self, record: Record, retry: Retry = Retry()) -> None:
        self.record = record
        self.retry = retry
        self._queue: queue.Queue[tuple[str, Sender, Alert] | None] = queue.Queue(BACKLOG)
        self._abort = threading.Event()  # set when closing runs out of time
        self._thread = threading.Thread(target=self._work, name="alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, target: str, sender: Sender, alert: Alert) -> None:
        try:
            self._queue.put_nowait((target, sender, alert))
        except queue.Full:
            log.warning(
                "notification backlog full; dropped %r for %s",
                alert.title,
                target,
                extra=context("notify.dropped", target=target, notify_event=alert.event),
            )

    def close(self, timeout: float = 15.0) -> None:
        """Send what is queued (retrying) for up to `timeout` seconds, then give up."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._abort.set()
        self._thread.join(5)

    def wait_idle(self) -> None:
        """Block until everything queued was sent or given up on (tests)."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._deliver(*job)
            finally:
                self._queue.task_done()

    def _deliver(self, target: str, sender: Sender, alert: Alert) -> None:
        error: str | None = None
        attempt = 0
        while attempt < self.retry.attempts:
            attempt += 1
            try:
                sender.send(alert)
            except SendError as exc:
                error = str(exc)
            except Exception as exc:  # a bug in a sender must not kill the thread
                error = f"unexpected {type(exc).__name__}: {exc}"
            else:
                self._record(target, alert, True, attempt, None)
                return
            log.warning(
                "cannot notify %s (attempt %d): %s",
                target,
                attempt,
                error,
                extra=context("notify.retry", target=target, attempt=attempt),
            )
            if attempt < self.retry.attempts and self._abort.wait(self.retry.delay(attempt)):
                break
        self._record(target, alert, False, attempt, error)

    def _record(
        self, target: str, alert: Alert, sent: bool, attempts: int, error: str | None
    ) -> None:
        level = logging.INFO if sent else logging.ERROR
        log.log(
            level,
            "%s %s notification to %s%s",
            "sent" if sent else "gave up on",
            alert.event,
            target,
            f" after {attempts} attempts: {error}" if error else "",
            extra=context(f"notify.{'sent' if sent else 'failed'}", target=target,
                          notify_event=alert.event, attempts=attempts),
        )  # fmt: skip
        try:
            self.record(target, alert.event, sent, attempts, alert.title, error)
        except Exception as exc:  # the ledger is busy: the log line above stays
            log.warning("cannot record a notification: %s", exc, extra=context("notify.unrecorded"))
