"""Several pipeline observers behind one (metrics, thumbnails, alerts, the terminal).

An observer's failure is logged and never reaches the pipeline: watching must not break
the work watched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from daemon.logs import context
from daemon.models import Item
from daemon.pipeline import PipelineObserver

log = logging.getLogger(__name__)


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

    def output_written(
        self,
        item: Item,
        input_data: bytes | None,
        output_data: bytes,
        previews: tuple[bytes, bytes] | None = None,
    ) -> None:
        self._each(lambda o: o.output_written(item, input_data, output_data, previews))

    def item_failed(self, item: Item, reason: str) -> None:
        self._each(lambda o: o.item_failed(item, reason))
