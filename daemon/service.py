"""Composition root: builds everything from settings (with the builders of `compose`),
runs the APScheduler loop, handles signals and the drain. Only `cli` imports this module."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from daemon.compose import (
    build_alerts,
    build_engine,
    build_metrics,
    build_other_engines,
    build_spool,
    build_storage,
    build_thumbnails,
    build_web_server,
    discovery_interval,
    ledger_url,
    patient_storage,
    worker_count,
)
from daemon.config import Settings
from daemon.engines.base import Engine
from daemon.errors import AuthError, TransientError
from daemon.ledger import Ledger
from daemon.logs import context
from daemon.models import Item, ItemStatus
from daemon.notify import Notifier
from daemon.observers import Observers, PipelineObserver
from daemon.pipeline import Pipeline
from daemon.secrets import redact
from daemon.storage.base import Storage

if TYPE_CHECKING:
    from daemon.web.server import WebServer

log = logging.getLogger(__name__)
HEALTHY_POLL_AGE_MIN = 10.0  # /healthz tolerates 3 poll intervals, but never less than this
MOVES_NAMED = 20  # owed moves the `run --once` summary names one by one


@dataclass(slots=True)
class RunSummary:
    counts: dict[ItemStatus, int] = field(default_factory=dict)
    pending: int = 0
    interrupted: bool = False
    unmoved: list[str] = field(default_factory=list)  # owed moves not made: `path -> archive/`

    def line(self) -> str:
        done = sum(self.counts.values())
        parts = ", ".join(
            f"{self.counts.get(s, 0)} {s}"
            for s in (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED)
        )
        moves = ""
        if self.unmoved:
            named = ", ".join(self.unmoved[:MOVES_NAMED])
            more = (
                f" and {len(self.unmoved) - MOVES_NAMED} more"
                if len(self.unmoved) > MOVES_NAMED
                else ""
            )
            moves = f"; {len(self.unmoved)} inputs not moved yet: {named}{more}"
        tail = " (interrupted)" if self.interrupted else ""
        return f"processed {done}: {parts}; {self.pending} still pending{moves}{tail}"


class Service:
    """One daemon instance: storage + engine + ledger + the loop around them."""

    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage | None = None,
        engine: Engine | None = None,
        other_engines: dict[str, Engine] | None = None,
        ledger: Ledger | None = None,
        notifier: Notifier | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        observers: Sequence[PipelineObserver] = (),
    ) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.ledger = ledger or Ledger(
            ledger_url(settings),
            lease_seconds=settings.ledger.lease_seconds,
            node_id=settings.ledger.node_id or None,
        )
        self.storage = patient_storage(storage or build_storage(settings), settings, self.stop)
        self.engine = engine or build_engine(settings, self.stop)
        if other_engines is None:
            other_engines = build_other_engines(settings, self.stop)
        self.engines = [self.engine, *other_engines.values()]
        self.metrics = build_metrics(settings, self.engine)
        self.thumbnails = build_thumbnails(settings)
        self.last_poll_time: float | None = None  # unix time, for people
        self.alerts = build_alerts(
            settings,
            self.ledger,
            self.engine.name,
            self.trouble,
            polled=lambda: self.last_poll_time is not None,
        )
        watchers = self.alerts.watchers if self.alerts is not None else []
        self.observers = Observers(
            [o for o in (self.metrics, self.thumbnails) if o is not None]
            + list(watchers)
            + list(observers)
        )
        self.spool = build_spool(settings)
        self.pipeline = Pipeline(
            self.storage,
            self.engine,
            self.ledger,
            settings,
            self.stop,
            self.observers,
            engines=other_engines,
            spool=self.spool,
        )
        self.in_flight: dict[int, Item] = {}
        self._lock = threading.Lock()
        self.monotonic = monotonic
        self.last_poll_at: float | None = None
        self.started_time = time.time()
        self.fatal: BaseException | None = None
        self.credential_error: str | None = None
        self.notifier = notifier or Notifier.from_environment()
        self.poll_every = discovery_interval(settings, self.notifier)
        self._workers: list[threading.Thread] = []
        self._claims_failing = threading.Event()  # warn once per ledger outage, not per worker
        self._engine_start: threading.Thread | None = None
        self._engine_error: BaseException | None = None
        if self.metrics is not None:
            self.metrics.track_in_flight(lambda: len(self.in_flight))
            self.metrics.track_pending(lambda: self.ledger.counts()[ItemStatus.PENDING])
            self.metrics.track_spool(self.spool.size)

    # -- start-up -------------------------------------------------------------------------

    def start(self, *, wait_for_engine: bool = True) -> None:
        """Migrate the ledger, check folders and engine, recover what a stop left behind.
        The engine loads (the model: ~0.5 s) in a thread meanwhile; `wait_for_engine=False`
        leaves it loading, for `engine_started()` to wait on after the first scan."""
        self._engine_start = threading.Thread(target=self._start_engine, name="engine-start")
        self._engine_start.start()
        log.info(
            "ledger at %s",
            self.ledger.describe(),
            extra=context("ledger.opened", url=self.ledger.describe()),
        )
        if self.ledger.migrate():
            log.info("ledger schema upgraded", extra=context("ledger.migrated"))
        self.storage.ensure_layout()
        if wait_for_engine:
            self.engine_started()
        if self.thumbnails is not None:
            self.thumbnails.start()
        if self.alerts is not None:
            self.alerts.start()
        self._open_spool()
        recovered = self.ledger.recover_stale()
        if recovered:
            log.info(
                "recovered %d revisions left processing",
                len(recovered),
                extra=context("recovery.items", count=len(recovered)),
            )
        self.pipeline.relocate_pending()

    def _start_engine(self) -> None:
        try:
            for engine in self.engines:
                engine.start()
        except BaseException as exc:  # re-raised in the caller's thread by engine_started()
            self._engine_error = exc

    def engine_started(self) -> None:
        """Wait for the engine started by `start()`; raise what it raised."""
        if self._engine_start is not None:
            self._engine_start.join()
        if self._engine_error is not None:
            raise self._engine_error

    def _open_spool(self) -> None:
        """Results kept for rows that are still to finish stay; the rest go."""
        self.spool.open()

        def still_wanted(item_id: int) -> bool:
            item = self.ledger.get(item_id)
            return item is not None and not item.status.is_terminal

        self.spool.clean(still_wanted)

    def close(self) -> None:
        if self.alerts is not None:
            self.alerts.close()
        if self._engine_start is not None:
            self._engine_start.join()
        for engine in self.engines:
            engine.close()
        self.storage.close()
        self.ledger.close()
        self.notifier.close()

    # -- the work -------------------------------------------------------------------------

    def work_until_idle(self) -> None:
        """Claim and process due revisions until none is left or a stop is asked."""
        while not self.stop.is_set():
            item = self._claim()
            if item is None:
                return
            with self._lock:
                self.in_flight[item.id] = item
            try:
                self.pipeline.process(item)
            except AuthError as exc:
                self._fatal(exc)
                return
            except TransientError as exc:  # its outcome could not be recorded
                self._give_back(item, exc)
                return
            finally:
                with self._lock:
                    self.in_flight.pop(item.id, None)

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

    def _fatal(self, exc: BaseException) -> None:
        if isinstance(exc, AuthError):
            self.credential_error = redact(str(exc))
        self.fatal = exc
        self.stop.set()
        self.wake.set()

    def discover(self) -> int | None:
        """One discovery pass; returns the number of files still settling, or None when
        the pass failed (it is retried by the next one)."""
        try:
            found = self.pipeline.discover(progress=self._ping_watchdog)
            self.pipeline.relocate_pending(wait=False)  # never hold up the watchdog's pass
        except AuthError as exc:
            self._fatal(exc)
            return 0
        except TransientError as exc:
            log.warning("discovery failed, will retry: %s", exc, extra=context("discovery.retry"))
            self._report()
            return None
        self.last_poll_at = self.monotonic()
        self.last_poll_time = time.time()
        if self.metrics is not None:
            self.metrics.poll_succeeded(self.last_poll_time)
        if found.added:
            self.wake.set()
        self._report()
        return found.settling

    # -- telling systemd and monitoring -----------------------------------------------------

    def _workers_alive(self) -> bool:
        return all(thread.is_alive() for thread in self._workers)

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 from the discovery loop itself, and only while every worker thread
        lives: a stuck pass or a dead worker stops the pings and systemd restarts us."""
        if self._workers_alive():
            self.notifier.watchdog()

    def _report(self) -> None:
        """After each discovery pass: the watchdog ping with STATUS=."""
        if not self.notifier.enabled:
            return
        try:
            status = self.status_line(self.ledger.counts())
        except TransientError as exc:
            status = f"ledger unavailable: {exc}"
        if self._workers_alive():
            self.notifier.watchdog(status)
        else:
            self.notifier.status(status)

    def status_line(self, counts: dict[ItemStatus, int]) -> str:
        """`1203 done, 3 in flight, 2 failed, 5 pending, last poll 4 s ago`."""
        done = counts[ItemStatus.SUCCEEDED] + counts[ItemStatus.SKIPPED]
        poll = (
            "no poll yet"
            if self.last_poll_at is None
            else f"last poll {self.monotonic() - self.last_poll_at:.0f} s ago"
        )
        return (
            f"{done} done, {len(self.in_flight)} in flight, {counts[ItemStatus.FAILED]} failed, "
            f"{counts[ItemStatus.PENDING]} pending, {poll}"
        )

    def health(self) -> str | None:
        """None while healthy; otherwise the reason, for /healthz."""
        if self.credential_error is not None:
            return f"credentials rejected: {self.credential_error}"
        if self.stop.is_set():
            return "stopping"
        dead = [thread.name for thread in self._workers if not thread.is_alive()]
        if dead:
            return f"worker threads stopped: {', '.join(dead)}"
        if self.last_poll_at is None:
            return "no successful poll yet"
        age = self.monotonic() - self.last_poll_at
        limit = max(3 * self.poll_every, HEALTHY_POLL_AGE_MIN)
        if age > limit:
            return f"last successful poll {age:.0f} s ago (limit {limit:.0f} s)"
        return None

    def trouble(self, now: datetime, threshold: float) -> str | None:
        """For `degraded` notifications: credentials rejected, or storage unreachable
        (no successful poll) for more than `threshold` seconds."""
        if self.credential_error is not None:
            return f"credentials rejected: {self.credential_error}"
        age = now.timestamp() - (self.last_poll_time or self.started_time)
        if age > threshold:
            return (
                f"{self.storage.describe()} unreachable: no successful poll for {age / 60:.0f} min"
            )
        return None

    def serve_http(self) -> WebServer | None:
        """Start the status page, /metrics and /healthz when `[http] enabled`."""
        if not self.settings.http.enabled:
            return None
        from daemon.web.app import LiveState

        metrics = self.metrics
        live = LiveState(
            engine=self.engine.name,
            storage=self.storage.describe(),
            health=self.health,
            last_poll=lambda: self.last_poll_time,
            metrics=(lambda: metrics.exposition()) if metrics is not None else None,
        )
        server = build_web_server(
            self.settings, live, self.ledger, self.storage, self.wake.set, self.thumbnails
        )
        server.start()
        return server

    def _parallel(
        self, count: int, target: Callable[[], None], name: str
    ) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=target, name=f"{name}-{n}", daemon=True) for n in range(count)
        ]
        for thread in threads:
            thread.start()
        return threads

    def run_once(self) -> RunSummary:
        """Take every image present to a terminal state, then return."""
        started = datetime.now(UTC)
        self.start(wait_for_engine=False)
        failures = 0
        while not self.stop.is_set():
            settling = self.discover()
            self.engine_started()  # the first scan ran while the model loaded
            failures = failures + 1 if settling is None else 0
            if failures > self.settings.retry.max_attempts:
                raise TransientError(f"storage unavailable after {failures - 1} retries")
            threads = self._parallel(worker_count(self.settings), self.work_until_idle, "worker")
            for thread in threads:
                while thread.is_alive() and not self.stop.is_set():
                    thread.join(0.2)
            due = self.ledger.next_due_at()
            if due is None and settling == 0:
                break
            wait = 1.0 if due is None else (due - datetime.now(UTC)).total_seconds()
            if settling is None:
                wait = self.settings.retry.delay_after(failures)
            self.stop.wait(min(max(wait, 0.05), 5.0 if settling is not None else wait))
        unmoved = self._finish_owed_moves() if not self.stop.is_set() else []
        interrupted = self.stop.is_set() and self.fatal is None
        self._drain()
        counts = self.ledger.counts()
        return RunSummary(
            self.ledger.finished_since(started),
            counts[ItemStatus.PENDING] + counts[ItemStatus.PROCESSING],
            interrupted=interrupted,
            unmoved=unmoved,
        )

    def _finish_owed_moves(self) -> list[str]:
        """`run --once` leaves no input behind: the archive/failed moves it owes are tried
        again (rate limits waited out in place) for up to `[retry] rate_limit_wait` s more.
        Returns those still owed then, as `path -> archive/`."""
        deadline = time.monotonic() + self.settings.retry.rate_limit_wait
        while True:
            self.pipeline.relocate_pending()
            owed = self.ledger.pending_relocations()
            if not owed or self.stop.is_set() or time.monotonic() >= deadline:
                return [f"{item.path} -> {target}/" for item, target in owed]
            self.stop.wait(min(1.0, max(deadline - time.monotonic(), 0.0)))

    def _worker_loop(self) -> None:
        while not self.stop.is_set():
            self.work_until_idle()
            try:
                due = self.ledger.next_due_at() if not self.stop.is_set() else None
            except TransientError:
                due = None
            wait = (
                self.settings.source.poll_interval
                if due is None
                else (due - datetime.now(UTC)).total_seconds()
            )
            if self.wake.wait(min(max(wait, 0.05), 5.0)):
                self.wake.clear()

    def _longpoll_loop(self, scheduler: BackgroundScheduler) -> None:
        """Wake discovery at once when storage reports a change (Dropbox longpoll)."""
        timeout = float(self.settings.dropbox.longpoll_timeout)
        while not self.stop.is_set():
            try:
                cursor = self.ledger.get_cursor(self.storage.key)
            except TransientError:
                cursor = None
            if cursor is None:
                self.stop.wait(1.0)
                continue
            try:
                changed = self.storage.wait_for_changes(cursor, timeout, self.stop)
            except Exception as exc:  # the interval poll is the safety net
                log.warning("longpoll failed: %s", exc, extra=context("longpoll.retry"))
                self.stop.wait(5.0)
                continue
            if changed and not self.stop.is_set():
                scheduler.modify_job("discover", next_run_time=datetime.now(UTC))

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (see install_signal_handlers), then drain."""
        self.start()
        server = self.serve_http()
        try:
            self._run_loops()
        finally:
            if server is not None:
                server.close()

    def _run_loops(self) -> None:
        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_job(
            self.discover,
            "interval",
            id="discover",
            seconds=self.poll_every,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        self._workers = self._parallel(worker_count(self.settings), self._worker_loop, "worker")
        log.info("cutoutd running on %s", self.storage.describe(), extra=context("service.ready"))
        self.notifier.ready(f"running on {self.storage.describe()}")
        scheduler.start()
        if self.settings.source.longpoll:
            self._parallel(1, lambda: self._longpoll_loop(scheduler), "longpoll")
        self.stop.wait()
        log.info("stopping", extra=context("service.stopping"))
        self.notifier.stopping("draining in-flight images")
        scheduler.shutdown(wait=False)
        self._drain()

    def _drain(self) -> None:
        """Let in-flight items finish within drain_timeout, then release the rest."""
        self.stop.set()
        self.wake.set()
        deadline = time.monotonic() + self.settings.service.drain_timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self.in_flight:
                    return
            time.sleep(0.05)
        with self._lock:
            left = list(self.in_flight.values())
        for item in left:
            self.pipeline.release(item, "still running when the drain timeout ran out")


def install_signal_handlers(service: Service) -> None:
    """First SIGTERM/SIGINT: stop taking work and drain. Second: exit at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if service.stop.is_set():
            os._exit(128 + signum)
        log.info("received %s", signal.Signals(signum).name, extra=context("service.signal"))
        service.stop.set()
        service.wake.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
