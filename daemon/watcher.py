"""The change watcher: discovery passes (list what changed since the stored cursor), the
Dropbox longpoll that asks for a pass as soon as something changes, and the sweep of input
moves still owed after each pass. When passes run is the schedule's business
(daemon.scheduling): the watcher runs one when asked (`discover`) and tells `on_change`
when storage reports a change.

`may_list` is the hook for a lister lease: asked before each listing, "may this node list
now?"; one node alone always may (the default). On a shared ledger only the lease holder
lists, longpolls, writes the cursor and sweeps owed moves; every other node's pass is the
lease check alone (its ledger works: healthy), and it is a "worker"."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from daemon.errors import AuthError, TransientError
from daemon.ledger_port import LedgerPort
from daemon.logs import context
from daemon.pipeline import Discovery, Pipeline
from daemon.storage.base import Storage

log = logging.getLogger(__name__)


def always() -> bool:
    return True


class ChangeWatcher:
    """Discovery over one storage. `wake` is set when a pass found new revisions (for the
    workers); `on_change` is called when the next pass should start now (longpoll)."""

    def __init__(
        self,
        pipeline: Pipeline,
        ledger: LedgerPort,
        storage: Storage,
        *,
        stop: threading.Event,
        wake: threading.Event,
        on_fatal: Callable[[BaseException], None],
        progress: Callable[[], None],
        after_pass: Callable[[], None],
        on_change: Callable[[], None] = lambda: None,
        on_polled: Callable[[float], None] | None = None,
        may_list: Callable[[], bool] = always,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`progress`: called after each listed page (the watchdog); `after_pass`: after
        each pass, failed or not; `on_polled`: told the unix time of each successful one."""
        self.pipeline = pipeline
        self.ledger = ledger
        self.storage = storage
        self.stop = stop
        self.wake = wake
        self.on_fatal = on_fatal
        self.progress = progress
        self.after_pass = after_pass
        self.on_change = on_change
        self.on_polled = on_polled
        self.may_list = may_list
        self.monotonic = monotonic
        self.listing = True  # holds the lister lease (always, alone on its ledger)
        self.last_poll_at: float | None = None  # monotonic, for /healthz
        self.last_poll_time: float | None = None  # unix time, for people
        self._longpoll: threading.Thread | None = None

    def discover(self) -> int | None:
        """One discovery pass, then the sweep of owed moves; returns the number of files
        still settling, or None when the pass failed (the next one tries again)."""
        try:
            self.listing = self.may_list()
            if self.listing:
                found = self.pipeline.discover(progress=self.progress)
                self.pipeline.relocate_pending(wait=False)  # never hold up the watchdog's pass
            else:
                found = Discovery()  # another node lists; this one's ledger works
        except AuthError as exc:
            self.on_fatal(exc)
            return 0
        except TransientError as exc:
            log.warning("discovery failed, will retry: %s", exc, extra=context("discovery.retry"))
            self.after_pass()
            return None
        except Exception:  # a bug must not end the daemon's discovery: the next pass retries
            log.exception("discovery failed", extra=context("discovery.error"))
            self.after_pass()
            return None
        self._polled(found)
        self.after_pass()
        return found.settling

    def _polled(self, found: Discovery) -> None:
        self.last_poll_at = self.monotonic()
        self.last_poll_time = time.time()
        if self.on_polled is not None:
            self.on_polled(self.last_poll_time)
        if found.added:
            self.wake.set()

    # -- longpoll -------------------------------------------------------------------------

    def start_longpoll(self, timeout: float) -> None:
        """Call `on_change` as soon as storage reports a change (Dropbox longpoll); once."""
        if self._longpoll is None:
            self._longpoll = threading.Thread(
                target=self._longpoll_loop, args=(timeout,), name="longpoll", daemon=True
            )
            self._longpoll.start()

    @property
    def role(self) -> str:
        """`lister` (lists, longpolls, writes the cursor, sweeps moves) or `worker`."""
        return "lister" if self.listing else "worker"

    def _longpoll_loop(self, timeout: float) -> None:
        while not self.stop.is_set():
            try:
                cursor = self.ledger.get_cursor(self.storage.key) if self.listing else None
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
                self.on_change()
