"""Discovery passes are an APScheduler job (daemon.scheduling), in `run` and `run --once`:
the job's shape, its cadence, the wake, the hold between `run --once` passes, backoff
after failed passes, and the stop. Waits are on the schedule's condition, never sleeps."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import Settings
from daemon.errors import TransientError
from daemon.ledger import Ledger
from daemon.models import ChangeBatch, ItemStatus
from daemon.scheduling import JOB_ID, DiscoverySchedule
from daemon.service import Service
from daemon.storage.local import LocalStorage
from tests.helpers import ChromaKeyEngine, write_shape

MakeService = Callable[..., Service]
WAIT = 30.0  # a bound for waits that end on a condition long before


@contextmanager
def running(service: Service) -> Iterator[Service]:
    """`cutoutd run` (daemon mode) in a thread; stopped as SIGTERM would, and joined."""
    thread = threading.Thread(target=service.run_forever, name="service")
    thread.start()
    try:
        yield service
    finally:
        service.request_stop()
        thread.join(WAIT)
        assert not thread.is_alive()


class UnreachableStorage(LocalStorage):
    """A folder whose listing always fails as a network outage would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings = 0

    def list_changes(self, cursor: str | None) -> ChangeBatch:
        self.listings += 1
        raise TransientError("storage unreachable")


def unreachable_service(settings: Settings) -> tuple[Service, UnreachableStorage]:
    storage = UnreachableStorage(settings.source.root)
    service = Service(
        settings, storage=storage, engine=ChromaKeyEngine(), ledger=Ledger(settings.ledger.url)
    )
    return service, storage


# -- in the service -------------------------------------------------------------------------


def test_discovery_is_an_apscheduler_interval_job(make_service: MakeService) -> None:
    service = make_service(source={"poll_interval": 0.2})
    with running(service):
        assert service.schedule.wait_for_pass(after=0, timeout=WAIT) is not None
        scheduler = service.schedule.scheduler
        assert isinstance(scheduler, BackgroundScheduler) and scheduler.running
        [job] = scheduler.get_jobs()
        assert job.id == JOB_ID == "discover"
        assert isinstance(job.trigger, IntervalTrigger)
        assert job.trigger.interval == timedelta(seconds=0.2)
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 1)
        assert job.next_run_time is not None  # not paused: `run` passes at the interval
    assert not scheduler.running  # the stop shut it down
    assert service.workers.threads == []  # and drained


def test_passes_repeat_at_the_configured_interval(make_service: MakeService) -> None:
    service = make_service(source={"poll_interval": 0.2})
    scheduled: list[datetime] = []

    def executed(event: JobExecutionEvent) -> None:
        scheduled.append(event.scheduled_run_time)

    with running(service):
        first = service.schedule.wait_for_pass(after=0, timeout=WAIT)
        assert first is not None
        service.schedule.scheduler.add_listener(executed, EVENT_JOB_EXECUTED)
        assert service.schedule.wait_for_pass(after=first.number + 5, timeout=WAIT) is not None
    assert len(scheduled) >= 4
    gaps = [(b - a).total_seconds() / 0.2 for a, b in itertools.pairwise(scheduled)]
    # each pass on its slot of the interval: one interval after the last (more if a slot
    # was coalesced away), never sooner
    assert all(gap >= 0.999 and abs(gap - round(gap)) < 0.01 for gap in gaps), gaps


def test_run_once_runs_its_passes_as_the_same_job(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    service = make_service()
    seen: list[tuple[str, Any]] = []
    discover = service.schedule.run_pass

    def recorded() -> int | None:
        seen.extend((job.id, job.trigger) for job in service.schedule.jobs())
        return discover()

    service.schedule.run_pass = recorded
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    assert seen and {job_id for job_id, _ in seen} == {"discover"}
    assert all(isinstance(trigger, IntervalTrigger) for _, trigger in seen)
    assert not service.schedule.scheduler.running


def test_run_once_gives_up_after_max_attempts_failed_passes(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(retry={"max_attempts": 3, "backoff_initial": 0.05})
    service, storage = unreachable_service(settings)
    try:
        with pytest.raises(TransientError, match="storage unavailable after 3 retries"):
            service.run_once()
        assert storage.listings == service.schedule.passes == 4  # the first pass + 3 retries
        assert not service.schedule.scheduler.running
    finally:
        service.close()


def test_the_daemon_retries_failed_passes_at_the_interval(
    make_settings: Callable[..., Settings],
) -> None:
    service, storage = unreachable_service(make_settings(retry={"max_attempts": 1}))
    try:
        with running(service):
            passed = service.schedule.wait_for_pass(after=4, timeout=WAIT)
            assert passed is not None and passed.settling is None  # failed, and went on
            assert not service.stop.is_set() and service.fatal is None
            [job] = service.schedule.jobs()
            assert job.next_run_time is not None
        assert storage.listings >= 5
    finally:
        service.close()


# -- the schedule on its own -----------------------------------------------------------------


@pytest.fixture
def schedules() -> Iterator[Callable[..., DiscoverySchedule]]:
    made: list[DiscoverySchedule] = []

    def make(run_pass: Callable[[], int | None], **start: bool) -> DiscoverySchedule:
        schedule = DiscoverySchedule(run_pass, interval=60.0)  # only a wake runs a 2nd pass
        made.append(schedule)
        schedule.start(**start)
        return schedule

    yield make
    for schedule in made:
        schedule.shutdown()


def test_a_wake_runs_a_pass_before_the_interval(
    schedules: Callable[..., DiscoverySchedule],
) -> None:
    schedule = schedules(lambda: 0)
    assert schedule.wait_for_pass(after=0, timeout=WAIT) is not None
    [job] = schedule.jobs()
    assert job.next_run_time > datetime.now(job.next_run_time.tzinfo) + timedelta(seconds=50)
    schedule.wake_now()
    assert schedule.wait_for_pass(after=1, timeout=WAIT) is not None


def test_a_wake_during_a_pass_runs_another_right_after(
    schedules: Callable[..., DiscoverySchedule],
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_first_pass() -> int:
        if not entered.is_set():
            entered.set()
            assert release.wait(WAIT)
        return 0

    schedule = schedules(slow_first_pass)
    assert entered.wait(WAIT)
    schedule.wake_now()  # the running pass may have listed before the change
    release.set()
    assert schedule.wait_for_pass(after=1, timeout=WAIT) is not None


def test_a_held_schedule_waits_to_be_told_the_next_pass(
    schedules: Callable[..., DiscoverySchedule],
) -> None:
    schedule = schedules(lambda: 0, hold_between_passes=True)
    assert schedule.wait_for_pass(after=0, timeout=WAIT) is not None
    [job] = schedule.jobs()
    assert job.next_run_time is None  # paused: `run --once` decides
    schedule.wake_now()  # held passes stay held
    assert schedule.jobs()[0].next_run_time is None
    schedule.run_in(0)
    assert schedule.wait_for_pass(after=1, timeout=WAIT) is not None


def test_an_interrupt_ends_the_wait_and_no_pass_starts_after(
    schedules: Callable[..., DiscoverySchedule],
) -> None:
    runs: list[int] = []
    schedule = schedules(lambda: runs.append(1) or 0)
    assert schedule.wait_for_pass(after=0, timeout=WAIT) is not None
    threading.Timer(0.05, schedule.interrupt).start()
    assert schedule.wait_for_pass(after=1) is None  # no timeout: only the interrupt ends it
    schedule.run_in(0)
    schedule.shutdown()
    assert runs == [1] and not schedule.scheduler.running
