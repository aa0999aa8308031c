"""The metrics endpoint over real HTTP on loopback, parsed with prometheus-client's parser,
and /healthz in its healthy and unhealthy states."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import Settings
from daemon.errors import AuthError, RateLimitedError, TransientError
from daemon.ledger import Ledger
from daemon.models import ChangeBatch, Cutout, EncodedCutout, EngineJob, ItemStatus, SubmittedJob
from daemon.secrets import register_secret
from daemon.service import Service
from daemon.storage.local import LocalStorage
from daemon.web.server import WebServer
from tests.helpers import ChromaKeyEngine, write_shape

MakeService = Callable[..., Service]
HTTP_ON = {"enabled": True, "port": 0}


@dataclass(frozen=True)
class Stats:
    rate_limited: int


class SubmittingEngine(ChromaKeyEngine):
    """Like a remote engine: records a submission (job id) before the result arrives, and
    keeps its own count of 429 answers."""

    def cut_out(self, job: EngineJob) -> Cutout:
        job.record_submission(SubmittedJob(f"job-{self.calls}", "http://127.0.0.1/status"))
        return super().cut_out(job)

    def stats(self) -> Stats:
        return Stats(rate_limited=7)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def scrape(server: WebServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels), parsed by prometheus-client's own parser."""
    status, text = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def servers() -> Iterator[list[WebServer]]:
    started: list[WebServer] = []
    yield started
    for server in started:
        server.close()


def serve(service: Service, servers: list[WebServer]) -> WebServer:
    server = service.serve_http()
    assert server is not None
    servers.append(server)
    return server


def test_off_with_http_disabled(make_service: MakeService) -> None:
    service = make_service(http={"enabled": False})
    assert service.metrics is None
    assert service.serve_http() is None


def test_scrape_counts_outcomes_retries_and_latencies(
    make_service: MakeService, root: Path, servers: list[WebServer]
) -> None:
    write_shape(root / "input" / "a.jpg")
    write_shape(root / "input" / "b.jpg", color=(20, 30, 200))
    (root / "input" / "broken.jpg").write_bytes(b"not an image")
    engine = SubmittingEngine()
    engine.fail_with = [TransientError("503 from upstream"), RateLimitedError("429", 0.01)]
    service = make_service(engine, http=HTTP_ON)
    server = serve(service, servers)
    assert server.address == "127.0.0.1"

    summary = service.run_once()

    assert summary.counts == {ItemStatus.SUCCEEDED: 2, ItemStatus.FAILED: 1}
    samples = scrape(server)
    assert samples[("cutoutd_images_total", (("outcome", "succeeded"),))] == 2
    assert samples[("cutoutd_images_total", (("outcome", "failed"),))] == 1
    assert samples[("cutoutd_images_total", (("outcome", "skipped"),))] == 0
    assert samples[("cutoutd_retries_total", (("reason", "transient"),))] == 1
    assert samples[("cutoutd_retries_total", (("reason", "rate_limited"),))] == 1
    assert samples[("cutoutd_engine_submissions_total", (("engine", "local"),))] == engine.calls
    assert samples[("cutoutd_rate_limited_total", (("engine", "local"),))] == 7
    assert engine.calls == 5
    latency = ("cutoutd_engine_latency_seconds_count", (("engine", "local"),))
    assert samples[latency] == engine.calls
    assert samples[("cutoutd_end_to_end_seconds_count", (("outcome", "succeeded"),))] == 2
    assert samples[("cutoutd_end_to_end_seconds_sum", (("outcome", "succeeded"),))] > 0
    assert samples[("cutoutd_in_flight", ())] == 0
    assert samples[("cutoutd_pending", ())] == 0
    assert samples[("cutoutd_last_successful_poll_timestamp_seconds", ())] > 1.7e9
    assert samples[("cutoutd_spool_bytes", ())] == 0  # every result written out
    service.spool.save(99, "job-99", EncodedCutout(b"x" * 1234, "Adobe job job-99"))
    assert scrape(server)[("cutoutd_spool_bytes", ())] == 1234


def test_scrape_says_what_runs_the_local_model(
    make_service: MakeService, servers: list[WebServer]
) -> None:
    pytest.importorskip("onnxruntime", reason="the local engine needs the `local` extra")
    from daemon.engines.local import LocalEngine

    engine = LocalEngine(workers=2, model_runs=2, threads=1, device="cpu")
    service = make_service(engine, http=HTTP_ON)
    server = serve(service, servers)
    assert not [key for key in scrape(server) if key[0] == "cutoutd_engine_hardware"]

    service.run_once()  # starts the engine; no images

    hardware = [key for key in scrape(server) if key[0] == "cutoutd_engine_hardware"]
    assert len(hardware) == 1
    labels = dict(hardware[0][1])
    assert labels["runtime"].startswith("onnxruntime ")
    expected = {"provider": "CPUExecutionProvider", "device": "cpu", "precision": "fp32"}
    expected |= {"threads": "1", "model_runs": "2", "engine": "local"}
    assert {key: labels[key] for key in expected} == expected
    engine.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RevokedStorage(LocalStorage):
    def __init__(self, root: str) -> None:
        super().__init__(root, settle_seconds=0)
        self.revoked = False

    def list_changes(self, cursor: str | None) -> ChangeBatch:
        if self.revoked:
            raise AuthError("refresh token sl.secret-token-123 was revoked")
        return super().list_changes(cursor)


def test_healthz_follows_the_poll_loop_and_the_credentials(
    make_settings: Callable[..., Settings], servers: list[WebServer]
) -> None:
    settings = make_settings(http=HTTP_ON, source={"poll_interval": 5})
    clock = Clock()
    storage = RevokedStorage(settings.source.root)
    service = Service(
        settings,
        storage=storage,
        engine=ChromaKeyEngine(),
        ledger=Ledger(settings.ledger.url),
        monotonic=clock,
    )
    try:
        service.start()
        server = serve(service, servers)
        health = f"http://127.0.0.1:{server.port}/healthz"
        assert get(health) == (503, "no successful poll yet\n")

        service.watcher.discover()
        assert get(health) == (200, "ok\n")

        clock.now += 16  # more than 3 poll intervals without a successful pass
        assert get(health) == (503, "last successful poll 16 s ago (limit 15 s)\n")
        service.watcher.discover()
        assert get(health) == (200, "ok\n")

        register_secret("sl.secret-token-123")
        storage.revoked = True
        service.watcher.discover()
        status, body = get(health)
        assert status == 503
        assert body == "credentials rejected: refresh token <redacted> was revoked\n"
        assert get(f"http://127.0.0.1:{server.port}/nope")[0] == 404
    finally:
        service.close()
