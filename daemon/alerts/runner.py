"""The notification targets running beside the daemon: a ticking thread that lets each
watcher decide, and the dispatcher that sends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from daemon.alerts.dispatch import Dispatcher
from daemon.alerts.watch import AlertWatcher
from daemon.logs import context

log = logging.getLogger(__name__)
TICK_SECONDS = 5.0


class Alerts:
    def __init__(self, watchers: Sequence[AlertWatcher], dispatcher: Dispatcher) -> None:
        self.watchers = list(watchers)
        self.dispatcher = dispatcher
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alerts-tick", daemon=True)

    def start(self) -> None:
        for watcher in self.watchers:
            try:
                watcher.start()
            except Exception:  # the ledger is busy: this target forgets a stale `degraded`
                log.exception(
                    "cannot read what %s was last told",
                    watcher.target.name,
                    extra=context("notify.error", target=watcher.target.name),
                )
        self.dispatcher.start()
        self._thread.start()

    def tick(self) -> None:
        for watcher in self.watchers:
            try:
                watcher.tick()
            except Exception:  # never let a notification problem reach the pipeline
                log.exception(
                    "notification check failed for %s",
                    watcher.target.name,
                    extra=context("notify.error", target=watcher.target.name),
                )

    def _loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.tick()

    def close(self) -> None:
        """Last look (a credential error that stops the daemon is told), the failures
        still waiting for their batch, then send what is queued."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(TICK_SECONDS + 1)
        self.tick()
        for watcher in self.watchers:
            watcher.flush()
        self.dispatcher.close()
