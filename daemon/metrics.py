"""Prometheus metrics: the only module that imports prometheus_client.

The HTTP server of `daemon.web` (on `[http] address:port`, on by default) serves them at
`GET /metrics` in the Prometheus text format, from a private registry (no process or
platform collectors of other libraries leak in, and tests can build several), beside
`GET /healthz` and the status page.

`Metrics` is also the pipeline's observer (see `PipelineObserver` in `daemon.pipeline`),
so the pipeline itself stays free of vendor imports.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from daemon.models import Item

log = logging.getLogger(__name__)

OUTCOMES = ("succeeded", "failed", "skipped")
RETRY_REASONS = ("transient", "rate_limited")
ENGINE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
END_TO_END_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)


class _RateLimitedCollector(Collector):
    """429 answers the engine met (it retries some itself, so the pipeline never sees
    them); read from the engine's own counters at scrape time."""

    def __init__(self, engine: str, read: Callable[[], int] | None) -> None:
        self.engine = engine
        self.read = read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "cutoutd_rate_limited",
            "429 Too Many Requests answers from the engine's API",
            labels=["engine"],
        )
        family.add_metric([self.engine], float(self.read() if self.read else 0))
        yield family


class _HardwareCollector(Collector):
    """`cutoutd_engine_hardware{runtime,provider,device,precision,threads,model_runs} 1`:
    what runs the local model, once the engine has started (nothing before, nor for a
    remote engine)."""

    def __init__(self, engine: str, read: Callable[[], dict[str, str] | None]) -> None:
        self.engine = engine
        self.read = read

    def collect(self) -> Iterable[Metric]:
        hardware = self.read()
        if hardware is None:
            return
        labels = ["engine", *hardware]
        family = GaugeMetricFamily(
            "cutoutd_engine_hardware", "What runs the model (always 1)", labels=labels
        )
        family.add_metric([self.engine, *hardware.values()], 1.0)
        yield family


def engine_hardware_reader(engine: object) -> Callable[[], dict[str, str] | None]:
    """The engine's `hardware` (a dataclass) as label values, read at scrape time."""

    def read() -> dict[str, str] | None:
        hardware = getattr(engine, "hardware", None)
        if not dataclasses.is_dataclass(hardware) or isinstance(hardware, type):
            return None
        return {key: str(value) for key, value in dataclasses.asdict(hardware).items()}

    return read


def engine_rate_limit_reader(engine: object) -> Callable[[], int] | None:
    """The engine's own 429 count, when it keeps one (`stats().rate_limited`)."""
    stats = getattr(engine, "stats", None)
    if not callable(stats):
        return None
    return lambda: int(getattr(stats(), "rate_limited", 0))


class Metrics:
    """Every metric cutoutd exports, on one private registry."""

    def __init__(
        self,
        engine: str,
        rate_limited: Callable[[], int] | None = None,
        hardware: Callable[[], dict[str, str] | None] | None = None,
    ) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.images = Counter(
            "cutoutd_images", "Input revisions taken to an outcome", ["outcome"], registry=r
        )
        self.submissions = Counter(
            "cutoutd_engine_submissions",
            "Jobs submitted to a remote engine (each one is billed)",
            ["engine"],
            registry=r,
        )
        self.retries = Counter(
            "cutoutd_retries", "Attempts rescheduled after trouble", ["reason"], registry=r
        )
        self.engine_latency = Histogram(
            "cutoutd_engine_latency_seconds",
            "Time spent in the engine per attempt",
            ["engine"],
            buckets=ENGINE_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "cutoutd_end_to_end_seconds",
            "From discovery of a revision to its outcome",
            ["outcome"],
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("cutoutd_in_flight", "Revisions being processed now", registry=r)
        self.pending = Gauge("cutoutd_pending", "Revisions waiting in the ledger", registry=r)
        self.spool_bytes = Gauge(
            "cutoutd_spool_bytes",
            "Bytes of received results kept on disk until their output is written",
            registry=r,
        )
        self.last_poll = Gauge(
            "cutoutd_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful discovery pass (0: none yet)",
            registry=r,
        )
        r.register(_RateLimitedCollector(engine, rate_limited))
        if hardware is not None:
            r.register(_HardwareCollector(engine, hardware))
        for outcome in OUTCOMES:  # zeros from the start: rate() needs a first sample
            self.images.labels(outcome)
            self.end_to_end.labels(outcome)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        self.submissions.labels(engine)
        self.engine_latency.labels(engine)

    # -- PipelineObserver ----------------------------------------------------------------

    def engine_finished(self, engine: str, seconds: float) -> None:
        self.engine_latency.labels(engine).observe(seconds)

    def job_submitted(self, engine: str) -> None:
        self.submissions.labels(engine).inc()

    def item_finished(self, outcome: str, seconds_since_discovery: float) -> None:
        self.images.labels(outcome).inc()
        self.end_to_end.labels(outcome).observe(max(seconds_since_discovery, 0.0))

    def retry_scheduled(self, rate_limited: bool) -> None:
        self.retries.labels("rate_limited" if rate_limited else "transient").inc()

    def output_written(self, item: Item, before: bytes | None, after: bytes) -> None:
        pass

    def item_failed(self, item: Item, reason: str) -> None:
        pass

    # -- the service's state -------------------------------------------------------------

    def track_in_flight(self, count: Callable[[], int]) -> None:
        self.in_flight.set_function(lambda: float(count()))

    def track_pending(self, count: Callable[[], int]) -> None:
        """Read at scrape time (one small ledger query); NaN when the ledger is out of reach."""

        def read() -> float:
            try:
                return float(count())
            except Exception:
                log.warning(
                    "cannot count pending revisions",
                    exc_info=True,
                    extra={"event": "metrics.error"},
                )
                return float("nan")

        self.pending.set_function(read)

    def track_spool(self, size: Callable[[], int]) -> None:
        self.spool_bytes.set_function(lambda: float(size()))

    def poll_succeeded(self, unix_time: float) -> None:
        self.last_poll.set(unix_time)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
