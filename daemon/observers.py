"""What the pipeline tells its observers (metrics, thumbnails, alerts, the terminal), and
several observers behind one.

An observer's failure is logged and never reaches the pipeline: watching must not break
the work watched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from daemon.logs import context
from daemon.models import Item

log = logging.getLogger(__name__)


class PipelineObserver(Protocol):
    """What metrics, thumbnails, alerts and the terminal want to know about outcomes (see
    daemon.metrics.Metrics, daemon.web.thumbnails, daemon.alerts, daemon.terminal)."""

    def engine_finished(self, engine: str, seconds: float) -> None: ...

    def job_submitted(self, engine: str) -> None: ...

    def item_finished(self, outcome: str, seconds_since_discovery: float) -> None: ...

    def retry_scheduled(self, rate_limited: bool) -> None: ...

    def output_written(self, item: Item, before: bytes | None, after: bytes) -> None:
        """A revision's outputs are written; `before` and `after` are small WebP renderings
        of its input and cutout for the status page (daemon.previews; `before` None when
        there is no picture of the input: the engine never saw it, as Photoshop fetches
        it itself, and the storage had no thumbnail of it)."""

    def item_failed(self, item: Item, reason: str) -> None: ...


class NullObserver:
    def engine_finished(self, engine: str, seconds: float) -> None:
        pass

    def job_submitted(self, engine: str) -> None:
        pass

    def item_finished(self, outcome: str, seconds_since_discovery: float) -> None:
        pass

    def retry_scheduled(self, rate_limited: bool) -> None:
        pass

    def output_written(self, item: Item, before: bytes | None, after: bytes) -> None:
        pass

    def item_failed(self, item: Item, reason: str) -> None:
        pass


class Observers:
    """Fans each PipelineObserver call out to every observer given."""

    def __init__(self, observers: Sequence[PipelineObserver]) -> None:
        self.observers = list(observers)

    def add(self, observer: PipelineObserver) -> None:
        self.observers.append(observer)

    def _each(self, call: Callable[[PipelineObserver], Any]) -> None:
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                log.exception(
                    "observer %s failed",
                    type(observer).__name__,
                    extra=context("observer.error", observer=type(observer).__name__),
                )

    def engine_finished(self, engine: str, seconds: float) -> None:
        self._each(lambda o: o.engine_finished(engine, seconds))

    def job_submitted(self, engine: str) -> None:
        self._each(lambda o: o.job_submitted(engine))

    def item_finished(self, outcome: str, seconds_since_discovery: float) -> None:
        self._each(lambda o: o.item_finished(outcome, seconds_since_discovery))

    def retry_scheduled(self, rate_limited: bool) -> None:
        self._each(lambda o: o.retry_scheduled(rate_limited))

    def output_written(self, item: Item, before: bytes | None, after: bytes) -> None:
        self._each(lambda o: o.output_written(item, before, after))

    def item_failed(self, item: Item, reason: str) -> None:
        self._each(lambda o: o.item_failed(item, reason))
