"""Rate limits are waited out in place, never paid for twice, and `run --once` finishes the
moves it owes: a real folder and a real SQLite ledger, with storage that answers 429s."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import RateLimitedError, TransientError
from daemon.inplace_retry import PatientStorage, RateLimitWaiter
from daemon.ledger import Ledger
from daemon.models import (
    Area,
    Cutout,
    EncodedCutout,
    EngineJob,
    ItemStatus,
    RemoteFile,
    SubmittedJob,
)
from daemon.relocation import Relocator
from daemon.service import Service
from daemon.storage.local import LocalStorage
from tests.helpers import ChromaKeyEngine, alpha_iou, encode, write_shape


class FlakyStorage(LocalStorage):
    """A real folder whose writes and moves fail the way Dropbox does, on demand."""

    def __init__(self, root: str) -> None:
        super().__init__(root, settle_seconds=0)
        self.write_errors: list[Exception] = []
        self.move_errors: list[Exception] = []
        self.move_forever: Exception | None = None
        self.batches: list[int] = []
        self.hold: threading.Event | None = None  # the first batch waits for it
        self.sending = threading.Event()

    def write(self, area: Area, path: str, data: bytes) -> str:
        if area == Area.OUTPUT and self.write_errors:
            raise self.write_errors.pop(0)
        return super().write(area, path, data)

    def relocate(self, file: RemoteFile, area: Area) -> str:
        if self.move_forever is not None:
            raise self.move_forever
        if self.move_errors:
            raise self.move_errors.pop(0)
        return super().relocate(file, area)

    def relocate_many(self, files: Sequence[RemoteFile], area: Area) -> list[str | Exception]:
        self.batches.append(len(files))
        if self.hold is not None and not self.sending.is_set():
            self.sending.set()
            self.hold.wait(10)
        return super().relocate_many(files, area)


class BilledEngine(ChromaKeyEngine):
    """Like the Photoshop engine: each call is a submission (recorded before the result),
    and the result comes back encoded, a PNG with alpha."""

    def cut_out(self, job: EngineJob) -> EncodedCutout:
        job.record_submission(SubmittedJob(f"job-{self.calls + 1}", "http://127.0.0.1/s"))
        cutout: Cutout = super().cut_out(job)
        image = cutout.image.convert("RGBA")
        image.putalpha(cutout.alpha)
        return EncodedCutout(encode(image, "PNG"), f"job-{self.calls}")


Rig = tuple[Service, FlakyStorage, ChromaKeyEngine]
Make = Callable[..., Rig]


@pytest.fixture
def make(make_settings: Callable[..., Settings], root: Path) -> Make:
    def build(**sections: dict[str, object]) -> Rig:
        settings = make_settings(**sections)
        storage, engine = FlakyStorage(str(root)), BilledEngine()
        service = Service(
            settings, storage=storage, engine=engine, ledger=Ledger(settings.ledger.url)
        )
        return service, storage, engine

    return build


def test_a_rate_limited_upload_waits_in_place_within_the_claim(make: Make, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    service, storage, engine = make(retry={"rate_limit_wait": 5})
    storage.write_errors = [RateLimitedError("429 too_many_requests", 0.05)] * 3
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1} and not summary.unmoved
    [item] = service.ledger.list_items()
    events = [e["event"] for e in service.ledger.events(item.id)]
    assert events.count("claimed") == 1 and "released" not in events  # one claim
    assert item.attempts == 1 and engine.calls == 1
    service.close()


def test_a_rate_limit_past_the_wait_gives_the_claim_back_and_the_retry_writes_from_the_spool(
    make: Make, root: Path
) -> None:
    mask = write_shape(root / "input" / "a.jpg")
    service, storage, engine = make(retry={"rate_limit_wait": 0.1, "max_attempts": 2})
    storage.write_errors = [RateLimitedError("429 too_many_write_operations", 0.06)] * 8
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    assert alpha_iou((root / "output" / "a.png").read_bytes(), mask) > 0.9
    assert engine.calls == 1  # the result was received once, and written from the spool
    [item] = service.ledger.list_items()
    events = [e["event"] for e in service.ledger.events(item.id)]
    assert events.count("released") >= 2 and "retry_scheduled" not in events
    assert events.count("result_received") == 1 and events.count("result_from_spool") >= 2
    assert item.attempts == 1  # more claims than max_attempts, none of them spent
    assert service.spool.size() == 0  # written out: the entry is gone
    service.close()


def test_an_upload_failure_retries_from_the_spool(make: Make, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    service, storage, engine = make()
    storage.write_errors = [TransientError("Dropbox answered HTTP 500 on upload")]
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    assert engine.calls == 1
    service.close()


def test_spooled_results_of_finished_rows_are_removed_at_start(make: Make, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    service, _, _ = make()
    service.run_once()
    [item] = service.ledger.list_items()
    png = EncodedCutout(b"\x89PNG", "job-1")
    service.spool.save(item.id, "job-1", png)  # succeeded: its entry is stale
    service.spool.save(999, "job-9", png)  # a row this ledger does not have
    assert service.spool.item_ids() == {item.id, 999}
    service.close()
    again, _, _ = make()
    again.start()
    assert again.spool.item_ids() == set()
    again.close()


def test_once_finishes_the_moves_it_owes(make: Make, root: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        write_shape(root / "input" / name)
    service, storage, _ = make(retry={"rate_limit_wait": 3})
    # every move is rate-limited for a while: longer than one call's wait
    storage.move_errors = [RateLimitedError("429", 0.05)] * 40
    summary = service.run_once()
    assert summary.unmoved == [] and summary.counts == {ItemStatus.SUCCEEDED: 2}
    assert sorted(p.name for p in (root / "archive").iterdir()) == ["a.jpg", "b.jpg"]
    assert not list((root / "input").iterdir())
    service.close()


def test_once_names_a_move_it_could_not_make(make: Make, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    service, storage, _ = make(retry={"rate_limit_wait": 0.3})
    storage.move_forever = RateLimitedError("429 too_many_write_operations", 0.05)
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    assert summary.unmoved == ["a.jpg -> archive/"]
    assert "1 inputs not moved yet: a.jpg -> archive/" in summary.line()
    assert (root / "input" / "a.jpg").exists()
    service.close()


def test_the_waiter_honours_retry_after_and_gives_up_at_its_limit() -> None:
    now = [0.0]

    class ClockedStop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            now[0] += timeout or 0.0
            return False

    waits: list[float] = []
    waiter = RateLimitWaiter(10.0, ClockedStop(), monotonic=lambda: now[0], on_wait=waits.append)
    answers: list[object] = [RateLimitedError("429", 3), RateLimitedError("429", None), "ok"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    assert waiter.call("upload", call) == "ok"
    assert waits == [3, 1.0]  # Retry-After, then the default when none was given
    answers[:] = [RateLimitedError("429", 4)] * 5
    with pytest.raises(RateLimitedError):
        waiter.call("upload", call)
    assert waits[2:] == [4, 4]  # a third wait would pass the 10 s limit


def test_a_batch_retries_only_its_rate_limited_entries(root: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_shape(root / "input" / name)
    storage = FlakyStorage(str(root))
    files = [RemoteFile(n, n, "rev", 1, "") for n in ("a.jpg", "b.jpg", "c.jpg")]
    storage.move_errors = [RateLimitedError("429", 0.01), RateLimitedError("429", 0.01)]
    patient = PatientStorage(storage, RateLimitWaiter(5.0, threading.Event()))
    assert patient.relocate_many(files, Area.ARCHIVE) == ["a.jpg", "b.jpg", "c.jpg"]
    assert storage.batches == [3, 2]  # a and b failed in the first batch, went again


def test_moves_that_finish_together_go_out_as_one_batch(
    make_settings: Callable[..., Settings], root: Path
) -> None:
    """While one batch is out, three more images finish: they go out together next."""
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    for name in names:
        write_shape(root / "input" / name)
    settings = make_settings()
    storage = FlakyStorage(str(root))
    ledger = Ledger(settings.ledger.url)
    ledger.migrate()
    ledger.record_changes(storage.key, storage.list_changes(None), "local")
    items = {i.path: i for i in ledger.list_items()}
    storage.hold = release = threading.Event()
    relocator = Relocator(storage, ledger, threading.Event(), linger=0.0)
    first = threading.Thread(target=relocator.relocate, args=(items["a.jpg"], "archive"))
    first.start()
    assert storage.sending.wait(10)
    for name in names[1:]:  # they find a flush in progress and only queue
        relocator.relocate(items[name], "archive")
    release.set()
    first.join(10)
    assert storage.batches == [1, 3]
    assert sorted(p.name for p in (root / "archive").iterdir()) == names
    ledger.close()
