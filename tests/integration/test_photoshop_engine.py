"""The Photoshop engine against the HTTP fake of IMS and Remove Background V2, over loopback."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.config import PhotoshopSettings
from daemon.engines.base import Engine
from daemon.engines.photoshop import (
    JobTimedOutError,
    PhotoshopEngine,
    StaleJobError,
)
from daemon.errors import (
    AuthError,
    EngineUnavailableError,
    PermanentItemError,
    TransientError,
)
from daemon.models import (
    EncodedCutout,
    EngineJob,
    EngineResult,
    Item,
    ItemStatus,
    SubmittedJob,
)
from daemon.rendering import decoded
from tests.fakes.photoshop_server import FakePhotoshop
from tests.helpers import cutout_iou, encode, shape_image


class FakeClock:
    """Virtual time: waits advance it at once instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        if stop.is_set():
            return True
        self.advance(max(seconds, 0.0))
        time.sleep(0.001)  # let the fake's threads run
        return stop.is_set()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Harness:
    """One EngineJob and what the engine did with its callables."""

    fake: FakePhotoshop
    url: str
    job: EngineJob = field(init=False)
    links: int = 0
    recorded: list[SubmittedJob] = field(default_factory=list)
    polls_at_record: list[int] = field(default_factory=list)

    def temporary_link(self) -> str:
        self.links += 1
        return self.url

    def record_submission(self, submitted: SubmittedJob) -> None:
        self.polls_at_record.append(self.fake.polls_of(submitted.job_id))
        self.recorded.append(submitted)


def make_item(path: str = "photo.jpg") -> Item:
    now = datetime.now(UTC)
    return Item(
        id=1, path=path, path_lower=path.lower(), rev="015f0000000001", content_hash="h",
        size=1, status=ItemStatus.PROCESSING, attempts=1, next_attempt_at=None,
        last_error=None, engine="photoshop", job_id=None, status_url=None, output_path=None,
        discovered_at=now, started_at=now, finished_at=None, archived_at=None,
        archived_path=None,
    )  # fmt: skip


@pytest.fixture
def fake() -> Iterator[FakePhotoshop]:
    with FakePhotoshop(submit_limit=100, submit_period=1.0, latency=0.05) as server:
        yield server


@pytest.fixture
def image() -> tuple[bytes, np.ndarray]:
    picture, mask = shape_image()
    return encode(picture, "JPEG", quality=95), mask


def settings_for(fake: FakePhotoshop, **overrides: Any) -> PhotoshopSettings:
    values: dict[str, Any] = {
        "api_url": fake.url, "ims_url": fake.ims_url, "submit_limit": 50,
        "submit_period": 1.0, "poll_initial": 0.02, "poll_multiplier": 1.5, "poll_max": 0.1,
        "job_timeout": 10.0, "request_timeout": 5.0,
    }  # fmt: skip
    return PhotoshopSettings(**{**values, **overrides})


MakeEngine = Callable[..., PhotoshopEngine]


@pytest.fixture
def make_engine(fake: FakePhotoshop) -> Iterator[MakeEngine]:
    made: list[PhotoshopEngine] = []

    def make(
        *, secret: str | None = None, clock: FakeClock | None = None, start: bool = True,
        stop: threading.Event | None = None, server: FakePhotoshop | None = None, **overrides: Any,
    ) -> PhotoshopEngine:  # fmt: skip
        server = server or fake
        engine = PhotoshopEngine(
            settings_for(server, **overrides),
            server.client_id,
            secret or server.client_secret,
            stop or threading.Event(),
            clock=clock,
        )
        made.append(engine)
        if start:
            engine.start()
        return engine

    yield make
    for engine in made:
        engine.close()


def harness(
    fake: FakePhotoshop,
    data: bytes,
    submitted: SubmittedJob | None = None,
    name: str = "photo.jpg",
) -> Harness:
    h = Harness(fake, fake.host_input(name, data, "image/jpeg"))
    h.job = EngineJob(
        item=make_item(name),
        read_bytes=lambda: data,
        temporary_link=h.temporary_link,
        record_submission=h.record_submission,
        submitted=submitted,
    )
    return h


def test_is_an_engine(make_engine: MakeEngine) -> None:
    engine: Engine = make_engine(start=False)
    assert engine.name == "photoshop"


def test_cutout_comes_back_as_png_with_alpha(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    engine = make_engine()
    h = harness(fake, image[0])
    result = engine.cut_out(h.job)
    assert isinstance(result, EncodedCutout) and result.data.startswith(b"\x89PNG")
    cutout = decoded(result)  # decoded when the outputs are rendered
    assert cutout.image.mode == "RGBA"
    assert cutout.image.size == cutout.alpha.size == image[1].shape[::-1]  # full resolution
    assert cutout_iou(result, image[1]) >= 0.9
    (job,) = fake.jobs.values()
    assert job.body == {
        "image": {"source": {"url": h.url}},
        "mode": "cutout",
        "output": {"mediaType": "image/png"},
        "trim": False,
        "colorDecontamination": 1.0,
    }
    assert h.recorded == [SubmittedJob(job.job_id, f"{fake.url}/v2/status/{job.job_id}")]
    assert h.polls_at_record == [0]  # stored before the first poll
    assert h.links == 1
    assert engine.stats().submissions == 1


def test_colour_decontamination_is_passed_on(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    result = make_engine(color_decontamination=0.5).cut_out(harness(fake, image[0]).job)
    assert cutout_iou(result, image[1]) >= 0.9
    (job,) = fake.jobs.values()
    assert job.body["colorDecontamination"] == 0.5
    assert (job.body["mode"], job.body["output"], job.body["trim"]) == (
        "cutout",
        {"mediaType": "image/png"},
        False,
    )
    assert "backgroundColor" not in job.body  # backgrounds are composed locally


def test_outputs_url_variant(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    fake.url_variant = "url"
    result = make_engine().cut_out(harness(fake, image[0]).job)
    assert cutout_iou(result, image[1]) >= 0.9


def test_resume_polls_the_stored_job_without_resubmitting(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    engine = make_engine()
    first = harness(fake, image[0])
    engine.cut_out(first.job)
    resumed = harness(fake, image[0], submitted=first.recorded[0])
    result = engine.cut_out(resumed.job)
    assert cutout_iou(result, image[1]) >= 0.9
    assert fake.submissions_for(first.url) == 1
    assert (resumed.links, resumed.recorded) == (0, [])


def resubmission_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Why each resubmission happened, from its `cutout.resubmitted` record."""
    return [
        r.getMessage() for r in caplog.records if getattr(r, "event", None) == "cutout.resubmitted"
    ]


def test_expired_result_is_resubmitted_once(
    fake: FakePhotoshop,
    make_engine: MakeEngine,
    image: tuple[bytes, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine()
    first = harness(fake, image[0])
    engine.cut_out(first.job)
    fake.expire_results()
    resumed = harness(fake, image[0], submitted=first.recorded[0])
    with caplog.at_level(logging.INFO, logger="daemon.engines.photoshop"):
        result = engine.cut_out(resumed.job)
    assert cutout_iou(result, image[1]) >= 0.9
    assert fake.submissions_for(first.url) == 2
    assert len(resumed.recorded) == 1 and resumed.recorded[0] != first.recorded[0]
    reasons = resubmission_reasons(caplog)
    assert len(reasons) == 1 and "expired" in reasons[0]
    assert engine.stats().resubmissions == 1


def test_resubmits_at_most_once(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    engine = make_engine()
    first = harness(fake, image[0])
    engine.cut_out(first.job)
    fake.result_ttl = 0  # every result URL is dead on arrival
    resumed = harness(fake, image[0], submitted=first.recorded[0])
    with pytest.raises(StaleJobError, match="resubmitted once") as caught:
        engine.cut_out(resumed.job)
    assert caught.value.forget_job
    assert fake.submissions_for(first.url) == 2


def test_resume_of_a_job_adobe_forgot_resubmits(
    fake: FakePhotoshop,
    make_engine: MakeEngine,
    image: tuple[bytes, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ghost = SubmittedJob("urn:ff:jobs:fake:gone", f"{fake.url}/v2/status/urn:ff:jobs:fake:gone")
    h = harness(fake, image[0], submitted=ghost)
    with caplog.at_level(logging.INFO, logger="daemon.engines.photoshop"):
        make_engine().cut_out(h.job)
    assert fake.submissions_for(h.url) == 1
    assert ["does not know" in reason for reason in resubmission_reasons(caplog)] == [True]


def test_token_is_cached_and_renewed_on_401(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    engine = make_engine()
    for _ in range(3):
        engine.cut_out(harness(fake, image[0]).job)
    assert fake.token_requests == 1
    fake.revoke_tokens()
    engine.cut_out(harness(fake, image[0]).job)
    assert fake.token_requests == 2
    fake.reject_next_calls(1)
    engine.cut_out(harness(fake, image[0]).job)
    assert fake.token_requests == 3
    fake.reject_next_calls(2)
    with pytest.raises(AuthError):
        engine.cut_out(harness(fake, image[0]).job)
    assert engine.stats().token_fetches == 4


def test_token_is_renewed_an_hour_before_it_expires(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    fake.latency, fake.token_expires_in = 0.0, 7200
    clock = FakeClock()
    engine = make_engine(clock=clock)
    engine.cut_out(harness(fake, image[0]).job)
    clock.advance(3500)
    engine.cut_out(harness(fake, image[0]).job)
    assert fake.token_requests == 1
    clock.advance(200)
    engine.cut_out(harness(fake, image[0]).job)
    assert fake.token_requests == 2


def test_bad_credentials_fail_at_start(fake: FakePhotoshop, make_engine: MakeEngine) -> None:
    engine = make_engine(secret="wrong", start=False)
    with pytest.raises(AuthError, match=r"invalid_client.*CLIENT_ID, CLIENT_SECRET"):
        engine.start()


def test_unreachable_ims_at_start(fake: FakePhotoshop, make_engine: MakeEngine) -> None:
    fake.slow_seconds = 1.0
    with pytest.raises(EngineUnavailableError, match="timed out"):
        make_engine(request_timeout=0.2)


def test_from_environment(fake: FakePhotoshop, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLIENT_ID", "CLIENT_SECRET", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AuthError, match="missing: CLIENT_ID, CLIENT_SECRET"):
        PhotoshopEngine.from_environment(settings_for(fake), threading.Event())
    monkeypatch.setenv("CLIENT_ID", fake.client_id)
    monkeypatch.setenv("CLIENT_SECRET", fake.client_secret)
    engine = PhotoshopEngine.from_environment(settings_for(fake), threading.Event())
    try:
        engine.start()
    finally:
        engine.close()
    assert fake.token_requests == 1


def test_429_honours_retry_after(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    engine = make_engine()
    fake.force_rate_limit(1, retry_after=0.3)
    started = time.monotonic()
    result = engine.cut_out(harness(fake, image[0]).job)
    assert cutout_iou(result, image[1]) >= 0.9
    assert fake.rate_limited == 1 and engine.stats().rate_limited == 1
    assert fake.submissions == 1
    assert fake.submit_times[-1] - started >= 0.3


def test_limiter_keeps_eight_threads_inside_the_window(
    make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    with FakePhotoshop(submit_limit=2, submit_period=0.4, latency=0.02) as strict:
        engine = make_engine(server=strict, submit_limit=2, submit_period=0.4)
        jobs = [harness(strict, image[0], name=f"p{i}.jpg").job for i in range(8)]
        results: list[EngineResult] = []
        errors: list[BaseException] = []

        def work(job: EngineJob) -> None:
            try:
                results.append(engine.cut_out(job))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert errors == [] and len(results) == 8
        assert (strict.submissions, strict.rate_limited) == (8, 0)
        times = sorted(strict.submit_times)
        assert all(later - earlier >= 0.4 for earlier, later in zip(times, times[2:], strict=False))


def test_in_flight_jobs_are_capped(
    make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    with FakePhotoshop(submit_limit=100, submit_period=1.0, latency=0.1) as server:
        engine = make_engine(server=server, max_in_flight=1)
        threads = [
            threading.Thread(target=engine.cut_out, args=(harness(server, image[0]).job,))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        times = sorted(job.created for job in server.jobs.values())
        assert len(times) == 3
        assert all(later - earlier >= 0.1 for earlier, later in itertools.pairwise(times))


def test_server_errors_are_transient(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    engine = make_engine()
    fake.inject_errors(1, status=500)
    with pytest.raises(TransientError, match="runtime_error") as caught:
        engine.cut_out(harness(fake, image[0]).job)
    assert not isinstance(caught.value, StaleJobError)
    assert fake.submissions == 0
    fake.inject_errors(1, status=403, error_code="unauthorized_forbidden")
    with pytest.raises(TransientError, match="quota"):
        engine.cut_out(harness(fake, image[0]).job)
    fake.inject_errors(2, status=503, where="status")  # polls shrug off a few glitches
    assert cutout_iou(engine.cut_out(harness(fake, image[0]).job), image[1]) >= 0.9
    fake.slow_seconds = 1.0
    slow = make_engine(request_timeout=0.2, start=False)
    with pytest.raises(TransientError, match="timed out"):
        slow.cut_out(harness(fake, image[0]).job)


def test_oversized_image_is_permanent(fake: FakePhotoshop, make_engine: MakeEngine) -> None:
    wide = encode(Image.new("RGB", (7000, 10), (255, 255, 255)), "PNG")
    with pytest.raises(PermanentItemError, match="7000x10"):
        make_engine().cut_out(harness(fake, wide).job)


def test_failed_jobs(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    engine = make_engine()
    fake.fail_next_jobs(1, "400401", "The input image is not supported")
    with pytest.raises(PermanentItemError, match="400401: The input image is not supported"):
        engine.cut_out(harness(fake, image[0]).job)
    fake.fail_next_jobs(1, "runtime_error", "worker crashed")
    with pytest.raises(StaleJobError, match="runtime_error: worker crashed") as caught:
        engine.cut_out(harness(fake, image[0]).job)
    assert isinstance(caught.value, TransientError) and caught.value.forget_job


def test_job_timeout(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    fake.latency = 10_000.0
    clock = FakeClock()
    engine = make_engine(
        clock=clock, poll_initial=2.0, poll_multiplier=1.5, poll_max=30.0, job_timeout=600.0
    )
    started = clock.monotonic()
    with pytest.raises(JobTimedOutError, match="timed out") as caught:
        engine.cut_out(harness(fake, image[0]).job)
    assert isinstance(caught.value, TransientError) and caught.value.forget_job
    assert 600 <= clock.monotonic() - started <= 601
    assert engine.stats().polls < 40


def test_stop_interrupts_polling(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    fake.latency = 60.0
    stop = threading.Event()
    engine = make_engine(stop=stop, poll_initial=0.05, poll_max=5.0)
    h = harness(fake, image[0])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            engine.cut_out(h.job)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.4)  # submitted, polling, now in a long wait
    stopped = time.monotonic()
    stop.set()
    thread.join(2)
    assert time.monotonic() - stopped < 0.5
    assert len(errors) == 1 and isinstance(errors[0], TransientError)
    assert str(errors[0]) == f"stopped while polling job {h.recorded[0].job_id}"
    assert not getattr(errors[0], "forget_job", False)  # the stored job will be resumed


def test_logs_carry_no_token_or_temporary_url(
    fake: FakePhotoshop,
    make_engine: MakeEngine,
    image: tuple[bytes, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        engine = make_engine()
        first = harness(fake, image[0])
        engine.cut_out(first.job)
        fake.expire_results()
        engine.cut_out(harness(fake, image[0], submitted=first.recorded[0]).job)
    ours = [r for r in caplog.records if r.name.startswith("daemon.")]
    assert len(ours) >= 4
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in ours)
    assert "token=" not in text and "sig=" not in text
    assert "fake-ims-" not in text and fake.client_secret not in text


def test_each_submission_try_takes_a_fresh_link(
    fake: FakePhotoshop, make_engine: MakeEngine, image: tuple[bytes, np.ndarray]
) -> None:
    """A link taken before a Retry-After pause may have expired by the retry (see
    tests/reliability/test_faults.py, temporary_link_expired)."""
    engine = make_engine()
    fake.force_rate_limit(2, retry_after=0.1)
    h = harness(fake, image[0])
    result = engine.cut_out(h.job)
    assert cutout_iou(result, image[1]) >= 0.9
    assert (fake.rate_limited, fake.submissions, h.links) == (2, 1, 3)


def test_expired_result_of_a_fresh_job_is_resubmitted_at_once(
    fake: FakePhotoshop,
    make_engine: MakeEngine,
    image: tuple[bytes, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine()
    fake.expire_next_results(1)
    h = harness(fake, image[0])
    with caplog.at_level(logging.INFO, logger="daemon.engines.photoshop"):
        result = engine.cut_out(h.job)
    assert cutout_iou(result, image[1]) >= 0.9
    assert fake.submissions_for(h.url) == 2 and len(h.recorded) == 2
    assert ["expired" in reason for reason in resubmission_reasons(caplog)] == [True]
    assert engine.stats().resubmissions == 1
