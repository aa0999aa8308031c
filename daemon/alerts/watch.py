"""Deciding when to notify: failures batched, trouble past a threshold, recovery, and the
daily digest at its local time. `tick()` reads the injected clock; the service calls it
every few seconds, tests call it with the clock where they want it."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from daemon.alerts.dispatch import Dispatcher
from daemon.alerts.messages import (
    Alert,
    Digest,
    Failure,
    degraded_alert,
    digest_alert,
    failed_alert,
    recovered_alert,
)
from daemon.alerts.senders import Sender
from daemon.config_notify import NotifySettings
from daemon.models import Item
from daemon.observers import NullObserver

STORM_WINDOW = timedelta(minutes=5)
REOPENED = "the trouble told before cutoutd last stopped"
Trouble = Callable[[datetime, float], str | None]  # (now, threshold s) -> reason or None
DigestSource = Callable[[datetime, datetime], Digest]  # [since, until)
OpenDegradation = Callable[[str], datetime | None]  # target -> when its open `degraded` was sent


def next_local_time(after: datetime, hour: int, minute: int) -> datetime:
    """The first moment strictly after `after` at hour:minute, local time."""
    local = after.astimezone()
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = (candidate + timedelta(days=1)).replace(hour=hour, minute=minute)
    return candidate


class AlertWatcher(NullObserver):
    """One `[[notify]]` target's view of the pipeline."""

    def __init__(
        self,
        target: NotifySettings,
        sender: Sender,
        dispatcher: Dispatcher,
        *,
        now: Callable[[], datetime],
        trouble: Trouble,
        digest: DigestSource,
        engine: str,
        open_degradation: OpenDegradation = lambda target: None,
        polled: Callable[[], bool] = lambda: True,
    ) -> None:
        """`open_degradation` and `polled` carry a `degraded` across a restart (credentials
        rejected stop the daemon, exit 77): see `start`."""
        self.target = target
        self.sender = sender
        self.dispatcher = dispatcher
        self.now = now
        self.trouble = trouble
        self.digest = digest
        self.engine = engine
        self._lock = threading.Lock()
        self._failures: list[Failure] = []
        self._first_failure_at: datetime | None = None
        self._last_failed_sent: datetime | None = None
        self._rate_limited: deque[datetime] = deque()
        self._engine_trouble_since: datetime | None = None
        self._degraded: tuple[str, datetime] | None = None
        self._reopened = False
        self.open_degradation = open_degradation
        self.polled = polled
        self._next_digest = next_local_time(now(), *target.digest_at)

    def start(self) -> None:
        """A `degraded` this target was sent before the last stop, with no `recovered`
        after it, is still open: `recovered` is sent once the trouble is over and storage
        has answered this process (a successful poll), not merely because it started."""
        since = self.open_degradation(self.target.name)
        if since is not None and self._degraded is None:
            self._degraded, self._reopened = (REOPENED, since), True

    def _send(self, alert: Alert) -> None:
        if alert.event in self.target.events:
            self.dispatcher.submit(self.target.name, self.sender, alert)

    # -- PipelineObserver -----------------------------------------------------------------

    def item_failed(self, item: Item, reason: str) -> None:
        with self._lock:
            self._failures.append(Failure(item.path, reason, item.id))
            self._first_failure_at = self._first_failure_at or self.now()

    def retry_scheduled(self, rate_limited: bool) -> None:
        with self._lock:
            if rate_limited:
                self._rate_limited.append(self.now())
            elif self._engine_trouble_since is None:
                self._engine_trouble_since = self.now()

    def item_finished(self, outcome: str, seconds_since_discovery: float) -> None:
        if outcome == "succeeded":
            with self._lock:
                self._engine_trouble_since = None

    # -- decisions ------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.now()
        self._flush_failures(now, force=False)
        self._check_health(now)
        if now >= self._next_digest:
            since = self._next_digest - timedelta(days=1)
            self._send(digest_alert(self.digest(since, self._next_digest), since, self.engine))
            self._next_digest = next_local_time(now, *self.target.digest_at)

    def flush(self) -> None:
        """At stop: send the failures still waiting for their batch."""
        self._flush_failures(self.now(), force=True)

    def _flush_failures(self, now: datetime, *, force: bool) -> None:
        batch = timedelta(minutes=self.target.batch_minutes)
        with self._lock:
            if not self._failures or self._first_failure_at is None:
                return
            waited = now - self._first_failure_at >= batch
            spaced = self._last_failed_sent is None or now - self._last_failed_sent >= batch
            if not force and not (waited and spaced):
                return
            failures, self._failures = self._failures, []
            self._first_failure_at = None
            self._last_failed_sent = now
        self._send(failed_alert(failures))

    def current_trouble(self, now: datetime) -> str | None:
        threshold = self.target.degraded_after
        reason = self.trouble(now, threshold)
        if reason:
            return reason
        with self._lock:
            while self._rate_limited and now - self._rate_limited[0] > STORM_WINDOW:
                self._rate_limited.popleft()
            storm = len(self._rate_limited)
            engine_since = self._engine_trouble_since
        if storm >= self.target.rate_limit_storm:
            return f"a storm of rate limits: {storm} answers 429 in 5 minutes"
        if engine_since is not None and (now - engine_since).total_seconds() >= threshold:
            minutes = (now - engine_since).total_seconds() / 60
            return f"the engine keeps failing (unreachable?) for {minutes:.0f} min"
        return None

    def _check_health(self, now: datetime) -> None:
        reason = self.current_trouble(now)
        if reason and self._degraded is None:
            self._degraded = (reason, now)
            self._send(degraded_alert(reason, now))
        elif reason is None and self._degraded is not None:
            if self._reopened and not self.polled():
                return  # restarted, and storage has not answered yet
            (was, since), self._degraded, self._reopened = self._degraded, None, False
            self._send(recovered_alert(was, since, now))
