"""Prometheus metrics and the health endpoint: the only module that imports prometheus_client.

Off by default (`[metrics] enabled = false`); when on, a small HTTP server bound to
`[metrics] address` (127.0.0.1 unless told otherwise) answers:

- `GET /metrics`: the Prometheus text format, from a private registry (no process or
  platform collectors of other libraries leak in, and tests can build several).
- `GET /healthz`: `200 ok` while the poll loop is alive and the credentials were last
  accepted; `503` with the reason otherwise.

`Metrics` is also the pipeline's observer (see `PipelineObserver` in `daemon.pipeline`),
so the pipeline itself stays free of vendor imports.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from daemon.errors import CutoutdError

log = logging.getLogger(__name__)

OUTCOMES = ("succeeded", "failed", "skipped")
RETRY_REASONS = ("transient", "rate_limited")
ENGINE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
END_TO_END_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
Health = Callable[[], str | None]  # None when healthy, else the reason


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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    metrics: ClassVar[Metrics]
    health: ClassVar[Health]
    timeout = 10  # seconds a client may take to send its request
    server_version = "cutoutd"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            reason = type(self).health()
            status, body = (200, "ok") if reason is None else (503, reason)
            self._reply(status, f"{body}\n".encode(), "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args, extra={"event": "metrics.request"})


class MetricsServer:
    """`/metrics` and `/healthz` over HTTP, served from a daemon thread."""

    def __init__(self, metrics: Metrics, address: str, port: int, health: Health) -> None:
        handler = type("Handler", (_Handler,), {"metrics": metrics, "health": staticmethod(health)})
        server_class = type(
            "Server",
            (ThreadingHTTPServer,),
            {"address_family": socket.AF_INET6 if ":" in address else socket.AF_INET},
        )
        try:
            self._server = server_class((address, port), handler)
        except OSError as exc:
            raise CutoutdError(
                f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info(
            "serving metrics on http://%s:%d/metrics",
            self._server.server_address[0],
            self.port,
            extra={"event": "metrics.listening", "port": self.port},
        )

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
