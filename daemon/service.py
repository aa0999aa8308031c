"""Composition root: builds everything from settings (with the builders of `compose`),
wires the worker pool, the change watcher and the health reporter, and runs the one loop
that serves both `run` and `run --once` over the discovery schedule (an APScheduler job,
daemon.scheduling); handles signals and the drain. Only `cli` imports this module."""

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
    open_ledger,
    patient_storage,
    worker_count,
)
from daemon.config import Settings
from daemon.engines.base import Engine
from daemon.errors import AuthError, TransientError
from daemon.health import HealthReporter
from daemon.ledger import Ledger
from daemon.logs import context
from daemon.membership import Membership, heartbeat_interval
from daemon.models import ItemStatus
from daemon.notify import Notifier
from daemon.observers import Observers, PipelineObserver
from daemon.pipeline import Pipeline
from daemon.scheduling import DiscoverySchedule, PassResult
from daemon.storage.base import Storage
from daemon.watcher import ChangeWatcher, always
from daemon.workers import WorkerPool

if TYPE_CHECKING:
    from daemon.web.server import WebServer

log = logging.getLogger(__name__)
MOVES_NAMED = 20  # owed moves the `run --once` summary names one by one
ONCE_PASS_AT_MOST = 5.0  # `run --once` lists again at least this often while work is left


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
    """One daemon instance: storage + engine + ledger, the workers, the watcher and the
    health reporter, and the loop around them."""

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
        self.ledger = ledger or open_ledger(settings)
        self.membership = Membership(
            self.ledger,
            heartbeat_interval(settings.ledger.lease_seconds, settings.ledger.heartbeat_seconds),
        )
        self.storage = patient_storage(storage or build_storage(settings), settings, self.stop)
        self.engine = engine or build_engine(settings, self.stop, ledger=self.ledger)
        if other_engines is None:
            other_engines = build_other_engines(settings, self.stop, self.ledger)
        self.engines = [self.engine, *other_engines.values()]
        self.metrics = build_metrics(settings, self.engine)
        self.thumbnails = build_thumbnails(settings)
        self.alerts = build_alerts(
            settings,
            self.ledger,
            self.engine.name,
            lambda now, t: self.health.trouble(now, t),
            polled=lambda: self.watcher.last_poll_time is not None,
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
        self.monotonic = monotonic
        self.fatal: BaseException | None = None
        self.notifier = notifier or Notifier.from_environment()
        self.poll_every = discovery_interval(settings, self.notifier)
        self.workers = WorkerPool(
            self.ledger,
            self.pipeline,
            count=worker_count(settings),
            poll_interval=settings.source.poll_interval,
            stop=self.stop,
            wake=self.wake,
            on_fatal=self._fatal,
        )
        self.watcher = ChangeWatcher(
            self.pipeline,
            self.ledger,
            self.storage,
            stop=self.stop,
            wake=self.wake,
            on_fatal=self._fatal,
            progress=lambda: self.health.ping_watchdog(),
            after_pass=lambda: self.health.report(),
            on_change=lambda: self.schedule.wake_now(),
            on_polled=self.metrics.poll_succeeded if self.metrics is not None else None,
            may_list=self.ledger.hold_lease if self.ledger.shared else always,
            monotonic=monotonic,
        )
        self.schedule = DiscoverySchedule(self.watcher.discover, interval=self.poll_every)
        self.health = HealthReporter(
            self.ledger,
            self.storage,
            self.notifier,
            self.workers,
            self.watcher,
            poll_every=self.poll_every,
            monotonic=monotonic,
        )
        self._engine_start: threading.Thread | None = None
        self._engine_error: BaseException | None = None
        if self.metrics is not None:
            self.metrics.track_in_flight(lambda: len(self.workers.in_flight))
            self.metrics.track_pending(lambda: self.ledger.counts()[ItemStatus.PENDING])
            self.metrics.track_spool(self.spool.size)
            self.metrics.track_role(lambda: self.watcher.role)

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
        if self.ledger.prepare_schema():
            log.info("ledger schema upgraded", extra=context("ledger.migrated"))
        self.membership.start()  # NodeConflictError: another live node has this name
        self.storage.ensure_layout()
        if wait_for_engine:
            self.engine_started()
        if self.thumbnails is not None:
            self.thumbnails.start()
        if self.alerts is not None:
            self.alerts.start()
        self._open_spool()
        recovered = self.ledger.recover_at_start()
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
        self.membership.close()
        if self.alerts is not None:
            self.alerts.close()
        if self._engine_start is not None:
            self._engine_start.join()
        for engine in self.engines:
            engine.close()
        self.storage.close()
        self.ledger.close()
        self.notifier.close()

    # -- stopping -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking work; wake every wait so the loop and the workers see it."""
        self.stop.set()
        self.wake.set()
        self.schedule.interrupt()

    def _fatal(self, exc: BaseException) -> None:
        if isinstance(exc, AuthError):
            self.health.credentials_rejected(exc)
        self.fatal = exc
        self.request_stop()

    def _drain(self) -> None:
        """Let in-flight items finish within drain_timeout, then release the rest."""
        self.request_stop()
        self.workers.drain(self.settings.service.drain_timeout)

    # -- the web --------------------------------------------------------------------------

    def serve_http(self) -> WebServer | None:
        """Start the status page, /metrics and /healthz when `[http] enabled`."""
        if not self.settings.http.enabled:
            return None
        from daemon.web.app import LiveState

        metrics = self.metrics
        live = LiveState(
            engine=self.engine.name,
            storage=self.storage.describe(),
            health=self.health.problem,
            last_poll=lambda: self.watcher.last_poll_time,
            role=lambda: self.watcher.role,
            node=self.ledger.node_id,
            metrics=(lambda: metrics.exposition()) if metrics is not None else None,
        )
        server = build_web_server(
            self.settings, live, self.ledger, self.storage, self.wake.set, self.thumbnails
        )
        server.start()
        return server

    # -- the run loop ---------------------------------------------------------------------

    def run_once(self) -> RunSummary:
        """Take every image present to a terminal state, then return."""
        summary = self.run(once=True)
        assert summary is not None
        return summary

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (see install_signal_handlers), then drain."""
        self.run(once=False)

    def run(self, *, once: bool) -> RunSummary | None:
        """The one loop of `run` and `run --once`: discovery passes on the schedule while
        the workers process what is due. `once` adds a stop condition (workers idle,
        nothing due, nothing settling, discovery done) and returns a summary; otherwise the
        loop runs until a stop is asked. Either way it ends with the drain."""
        started = datetime.now(UTC)
        self.start(wait_for_engine=not once)  # once: the model loads during the first scan
        server = None if once else self.serve_http()
        try:
            if not once:
                log.info(
                    "cutoutd running on %s",
                    self.storage.describe(),
                    extra=context("service.ready"),
                )
                self.notifier.ready(f"running on {self.storage.describe()}")
            self._loop(once)
            unmoved = self._finish_owed_moves() if once and not self.stop.is_set() else []
            interrupted = self.stop.is_set() and self.fatal is None
            if not once:
                log.info("stopping", extra=context("service.stopping"))
                self.notifier.stopping("draining in-flight images")
            self._drain()
        finally:
            if server is not None:
                server.close()
        if not once:
            return None
        counts = self.ledger.counts()
        return RunSummary(
            self.ledger.finished_since(started),
            counts[ItemStatus.PENDING] + counts[ItemStatus.PROCESSING],
            interrupted=interrupted,
            unmoved=unmoved,
        )

    def _loop(self, once: bool) -> None:
        """Start the schedule (its first pass at once) and follow its passes until a stop
        or, for `run --once`, the stop condition; the scheduler is shut down after."""
        self.schedule.start(hold_between_passes=once)
        try:
            failures = 0
            passed = self.schedule.wait_for_pass(after=0)
            while passed is not None and not self.stop.is_set():
                self.engine_started()  # the first scan ran while the model loaded
                self.workers.start()
                if not once:
                    self._start_longpoll()
                    self.stop.wait()  # passes go on at the interval until a stop
                    return
                failures = failures + 1 if passed.settling is None else 0
                wait = self._until_next_pass(passed, failures)
                if wait is None:
                    return
                self.schedule.run_in(wait)
                passed = self.schedule.wait_for_pass(after=passed.number)
        finally:
            self.schedule.shutdown()

    def _start_longpoll(self) -> None:
        if self.settings.source.longpoll:
            self.watcher.start_longpoll(float(self.settings.dropbox.longpoll_timeout))

    def _until_next_pass(self, passed: PassResult, failures: int) -> float | None:
        """`run --once`: seconds until the next discovery pass, once the workers are idle;
        None when nothing is due or settling and discovery is done."""
        if failures > self.settings.retry.max_attempts:
            raise TransientError(f"storage unavailable after {failures - 1} retries")
        self.workers.wait_until_idle()
        due = self.ledger.next_due_at()
        if due is None and passed.settling == 0:
            return None
        if passed.settling is None:
            return max(self.settings.retry.delay_after(failures), 0.05)
        wait = 1.0 if due is None else (due - datetime.now(UTC)).total_seconds()
        return min(max(wait, 0.05), ONCE_PASS_AT_MOST)

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


def install_signal_handlers(service: Service) -> None:
    """First SIGTERM/SIGINT: stop taking work and drain. Second: exit at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if service.stop.is_set():
            os._exit(128 + signum)
        log.info("received %s", signal.Signals(signum).name, extra=context("service.signal"))
        service.request_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
