"""Audit queries and the requeue commands on real SQLite files and real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon import cli
from daemon.errors import TransientError
from daemon.ledger import Ledger
from daemon.ledger import audit as audit_module
from daemon.ledger.audit import AuditArgumentError, ItemFilter, LedgerAudit, Sort, sample_stride
from daemon.ledger.queries import LedgerReader
from daemon.ledger.requeue import RequeueError, Requeuer
from daemon.ledger.schema import Base
from daemon.models import Area, ChangeBatch, Item, ItemStatus, RemoteFile, SubmittedJob
from daemon.storage.local import LocalStorage

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SUCCEEDED, FAILED, SKIPPED = ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def remote(path: str, rev: str | None = None, content_hash: str | None = None) -> RemoteFile:
    return RemoteFile(
        path=path,
        path_lower=path.lower(),
        rev=rev or f"rev-{path.lower()}",
        size=10,
        content_hash=content_hash or f"hash-{path.lower()}",
    )


class History:
    """Writes revisions through the Ledger API the way the pipeline does."""

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock

    def discover(self, path: str, engine: str = "local", **kw: str) -> Item:
        self.ledger.record_changes("s", ChangeBatch((remote(path, **kw),), cursor=path), engine)
        [item] = [i for i in self.ledger.list_items(limit=1)]
        return item

    def run(
        self,
        path: str,
        outcome: ItemStatus = SUCCEEDED,
        *,
        queued: float = 1.0,
        engine_seconds: float = 2.0,
        reason: str | None = None,
        submissions: int = 0,
        engine: str = "local",
        **kw: str,
    ) -> Item:
        self.discover(path, engine, **kw)
        self.clock.advance(queued)
        item = self.ledger.claim_next()
        assert item is not None and item.path == path
        for number in range(submissions):
            job = SubmittedJob(f"job-{item.id}-{number}", "https://status")
            self.ledger.record_submission(item, job, resubmitted=number > 0)
        self.clock.advance(engine_seconds)
        values = {"finished_at": self.clock(), "last_error": reason, "claimed_by": None}
        if outcome is SUCCEEDED:
            values["output_path"] = path.rsplit(".", 1)[0] + ".png"
        return self.ledger.transition(
            item.id, ItemStatus.PROCESSING, outcome, outcome.value, values, reason=reason
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(ledger_url, clock=clock, node_id="host-a:1")
    ledger.migrate()
    yield ledger
    ledger.close()


@pytest.fixture
def history(ledger: Ledger, clock: Clock) -> History:
    return History(ledger, clock)


@pytest.fixture
def audit(ledger_url: str, ledger: Ledger, clock: Clock) -> Iterator[LedgerAudit]:
    audit = LedgerAudit(LedgerReader(ledger_url, writer=False, clock=clock))
    yield audit
    audit.close()


def paths(items: list[Item]) -> list[str]:
    return [item.path for item in items]


# -- schema -------------------------------------------------------------------------------


def test_migration_creates_the_indexes_of_schema_py(ledger: Ledger) -> None:
    query = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index'",
        "postgresql": "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()",
    }[ledger.engine.dialect.name]
    with ledger.engine.connect() as connection:
        present = set(connection.exec_driver_sql(query).scalars())
    declared = {index.name for table in Base.metadata.sorted_tables for index in table.indexes}
    assert declared <= present
    assert {
        "ix_items_status_id",
        "ix_items_outcome",
        "ix_items_path_ci",
        "ix_events_event_at",
        "ix_items_archived_path",
    } <= declared


# -- list ---------------------------------------------------------------------------------


def test_list_filters_sort_and_limit(history: History, audit: LedgerAudit, clock: Clock) -> None:
    history.run("photos/a.jpg")
    history.run("photos/B.JPG", FAILED, reason="not an image", engine="photoshop")
    clock.advance(3600)
    history.run("other/c.png", SKIPPED, reason="duplicate of photos/a.jpg (rev 1)")
    history.discover("photos/sub/d.jpg", engine="photoshop")
    assert paths(audit.list_items()) == [
        "photos/sub/d.jpg",
        "other/c.png",
        "photos/B.JPG",
        "photos/a.jpg",
    ]
    assert paths(audit.list_items(sort=Sort.OLDEST, limit=2)) == ["photos/a.jpg", "photos/B.JPG"]
    assert paths(audit.list_items(sort=Sort.PATH)) == [
        "other/c.png",
        "photos/a.jpg",
        "photos/B.JPG",
        "photos/sub/d.jpg",
    ]
    assert paths(audit.list_items(sort=Sort.PATH, reverse=True, limit=1)) == ["photos/sub/d.jpg"]
    assert paths(audit.list_items(sort=Sort.NEWEST, reverse=True, limit=1)) == ["photos/a.jpg"]
    by_status = ItemFilter(statuses=(FAILED, ItemStatus.PENDING))
    assert paths(audit.list_items(by_status)) == ["photos/sub/d.jpg", "photos/B.JPG"]
    assert paths(audit.list_items(ItemFilter(engine="photoshop"))) == [
        "photos/sub/d.jpg",
        "photos/B.JPG",
    ]
    # globs: any case, * crosses folders, ? is one character
    assert paths(audit.list_items(ItemFilter(path_glob="PHOTOS/*.jpg"))) == [
        "photos/sub/d.jpg",
        "photos/B.JPG",
        "photos/a.jpg",
    ]
    assert paths(audit.list_items(ItemFilter(path_glob="photos/?.jpg"))) == [
        "photos/B.JPG",
        "photos/a.jpg",
    ]
    assert paths(audit.list_items(ItemFilter(path_glob="*.png"))) == ["other/c.png"]
    # discovered in a window
    later = ItemFilter(since=START + timedelta(minutes=30))
    assert paths(audit.list_items(later)) == ["photos/sub/d.jpg", "other/c.png"]
    earlier = ItemFilter(until=START + timedelta(minutes=30), path_glob="photos/*")
    assert paths(audit.list_items(earlier)) == ["photos/B.JPG", "photos/a.jpg"]


def test_glob_treats_like_wildcards_literally(history: History, audit: LedgerAudit) -> None:
    for path in ("a_b.jpg", "axb.jpg", "50%.jpg", "500.jpg", "back\\slash.jpg"):
        history.discover(path)
    assert paths(audit.list_items(ItemFilter(path_glob="a_b*"))) == ["a_b.jpg"]
    assert paths(audit.list_items(ItemFilter(path_glob="50%*"))) == ["50%.jpg"]
    assert paths(audit.list_items(ItemFilter(path_glob="back\\*"))) == ["back\\slash.jpg"]
    assert paths(audit.list_items(ItemFilter(path_glob="?0?.jpg"))) == ["500.jpg", "50%.jpg"]


# -- show ---------------------------------------------------------------------------------


def test_show_every_revision_with_events_and_durations(
    history: History, audit: LedgerAudit, ledger: Ledger, clock: Clock
) -> None:
    first = history.run("mug.jpg", queued=1.5, engine_seconds=4.0, submissions=2, rev="r1")
    clock.advance(0.5)
    ledger.mark_relocated(first, "archive/mug.jpg", "moved_to_archive")
    history.run("mug.jpg", FAILED, reason="job failed", rev="r2")
    history.run("other.jpg")
    revisions = audit.show("mug.jpg")
    assert [h.item.rev for h in revisions] == ["r1", "r2"]
    steps = revisions[0].steps()
    names = [s.event.event for s in steps]
    assert names == [
        "discovered",
        "claimed",
        "submitted",
        "resubmitted",
        "succeeded",
        "moved_to_archive",
    ]
    assert steps[0].since_previous is None
    assert steps[1].since_previous == timedelta(seconds=1.5)
    assert steps[2].event.detail == {"job_id": f"job-{first.id}-0"}
    assert steps[4].since_previous == timedelta(seconds=4.0)
    assert steps[5].since_start == timedelta(seconds=6.0)
    assert steps[5].event.detail == {"path": "archive/mug.jpg"}
    assert steps[1].event.actor == "host-a:1"
    # the same file by id, by its input/, archive/ and output/ names, in any case
    assert [h.item.id for h in audit.show(str(first.id))] == [first.id]
    assert [h.item.id for h in audit.show(f"#{first.id}")] == [first.id]
    for ref in ("MUG.JPG", "input/mug.jpg", "archive/mug.jpg", "output/mug.png"):
        assert [h.item.rev for h in audit.show(ref)] == ["r1", "r2"], ref
    with pytest.raises(AuditArgumentError, match=r"no revision of 'nothing\.jpg'"):
        audit.show("nothing.jpg")
    with pytest.raises(AuditArgumentError):
        audit.show("999999")


# -- stats --------------------------------------------------------------------------------


def test_stats_counts_latency_submissions_failures_duplicates(
    history: History, audit: LedgerAudit, clock: Clock
) -> None:
    for n, (queued, engine_seconds) in enumerate([(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]):
        history.run(
            f"ok{n}.jpg",
            queued=queued,
            engine_seconds=engine_seconds,
            submissions=2 if n == 0 else 1,
            engine="photoshop",
        )
    history.run("bad1.jpg", FAILED, reason="not an image: <object at 0x7f01>")
    history.run("bad2.jpg", FAILED, reason="not an image: <object at 0x7f02>")
    history.run("bad3.jpg", FAILED, reason="rejected by the API")
    history.run("dup.jpg", SKIPPED, reason="duplicate of ok0.jpg (rev r); output reused")
    history.run("gone.jpg", SKIPPED, reason="deleted before processing")
    history.discover("waiting.jpg")
    stats = audit.stats()
    assert stats.counts == {
        ItemStatus.PENDING: 1,
        ItemStatus.PROCESSING: 0,
        SUCCEEDED: 5,
        FAILED: 3,
        SKIPPED: 2,
    }
    assert stats.processed == 10
    assert (stats.latency.count, stats.latency.sampled) == (5, 5)
    # queued + engine: 3, 6, 9, 12, 15 s (SQLite's julianday is good to about a millisecond)
    assert stats.latency.p50 == pytest.approx(9.0, abs=1e-3)
    assert stats.latency.p95 == pytest.approx(14.4, abs=1e-3)
    assert stats.engine_latency.p50 == pytest.approx(6.0, abs=1e-3)
    assert stats.submissions == {"submitted": 5, "resubmitted": 1}
    assert stats.failures == [("not an image: <object at 0x…>", 2), ("rejected by the API", 1)]
    assert stats.duplicates_skipped == 1
    assert stats.first_finished is not None and stats.last_finished is not None
    assert stats.first_finished == START + timedelta(seconds=3)
    span_hours = (stats.last_finished - stats.first_finished).total_seconds() / 3600
    assert stats.images_per_hour == pytest.approx(10 / max(span_hours, 1 / 60))


def test_stats_window_and_periods(history: History, audit: LedgerAudit, clock: Clock) -> None:
    history.run("a.jpg", submissions=1)  # 2026-11-02 09:00
    clock.advance(3600)
    history.run("b.jpg", FAILED, reason="x")  # 10:00
    clock.advance(86400)
    history.run("c.jpg", submissions=1)  # 2026-11-03 10:00
    clock.now = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    history.run("d.jpg")
    everything = audit.stats(by="month")
    assert [(b.start.month, b.outcomes[SUCCEEDED], b.submissions) for b in everything.buckets] == [
        (11, 2, 2),
        (12, 1, 0),
    ]
    days = audit.stats(by="day")
    assert len(days.buckets) == 30  # every day from Nov 2 to Dec 1, empty ones included
    assert days.buckets[0].start == datetime(2026, 11, 2, tzinfo=UTC)
    assert (days.buckets[0].outcomes[SUCCEEDED], days.buckets[0].outcomes[FAILED]) == (1, 1)
    since = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    until = datetime(2026, 11, 3, 11, 0, tzinfo=UTC)
    window = audit.stats(since, until, by="hour")
    assert window.counts[SUCCEEDED] == 1 and window.counts[FAILED] == 1
    assert window.submissions == {"submitted": 1, "resubmitted": 0}
    assert window.buckets[0].start == datetime(2026, 11, 2, 9, tzinfo=UTC)  # clipped, not lost
    assert window.buckets[-1].start == datetime(2026, 11, 3, 10, tzinfo=UTC)
    assert sum(b.outcomes[SUCCEEDED] + b.outcomes[FAILED] for b in window.buckets) == 2
    assert window.images_per_hour == pytest.approx(2 / ((until - since).total_seconds() / 3600))
    empty = audit.stats(since=datetime(2030, 1, 1, tzinfo=UTC), by="day")
    assert (empty.processed, empty.buckets, empty.images_per_hour) == (0, [], None)
    assert empty.latency.p50 is None
    with pytest.raises(AuditArgumentError, match="periods"):
        audit.stats(since=datetime(2000, 1, 1, tzinfo=UTC), by="hour")


def test_latency_percentiles_come_from_a_sample_beyond_the_limit(
    history: History, audit: LedgerAudit, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.LATENCY_SAMPLE == audit_module.LATENCY_SAMPLE  # the help text tells the truth
    for n in range(60):
        history.run(f"{n}.jpg", queued=0, engine_seconds=n + 1)
    monkeypatch.setattr(audit_module, "LATENCY_SAMPLE", 10)
    stats = audit.stats()
    assert stats.latency.count == 60
    assert 8 <= stats.latency.sampled <= 12
    assert stats.latency.p50 is not None and 20 <= stats.latency.p50 <= 40
    assert sample_stride(60, 10) == 7 and sample_stride(10, 10) == 1 and sample_stride(0, 10) == 1
    exact = audit.stats(exact=True)
    assert (exact.latency.count, exact.latency.sampled) == (60, 60)
    assert exact.latency.p50 == pytest.approx(30.5, abs=1e-3)  # 1..60 s
    assert exact.latency.p95 == pytest.approx(57.05, abs=1e-3)
    assert exact.engine_latency.p50 == pytest.approx(30.5, abs=1e-3)
    window = audit.stats(since=START + timedelta(seconds=1))
    assert window.latency.count == 60 and window.latency.sampled <= 12
    assert audit.stats(since=START + timedelta(days=1), exact=True).latency.p50 is None


# -- export -------------------------------------------------------------------------------


def test_export_streams_items_and_events(history: History, audit: LedgerAudit) -> None:
    for n in range(5):
        history.run(f"{n}.jpg", submissions=1)
    exported = audit.export_items()
    assert not isinstance(exported, list)  # a generator: rows come as they are read
    assert paths(list(exported)) == [f"{n}.jpg" for n in range(5)]
    window = ItemFilter(since=START + timedelta(seconds=5), until=START + timedelta(seconds=10))
    assert paths(list(audit.export_items(window))) == ["2.jpg", "3.jpg"]
    events = list(audit.export_events())
    assert len(events) == 5 * 4
    event, path, rev = events[2]
    assert (event.event, path, rev, event.detail["job_id"]) == (
        "submitted",
        "0.jpg",
        "rev-0.jpg",
        "job-1-0",
    )
    assert [e.id for e, _, _ in events] == sorted(e.id for e, _, _ in events)


# -- requeue ------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "root", settle_seconds=0)
    storage.ensure_layout()
    return storage


@pytest.fixture
def requeuer(ledger: Ledger, storage: LocalStorage) -> Requeuer:
    return Requeuer(ledger, storage, "cli:tester@host")


def discover_all(ledger: Ledger, storage: LocalStorage) -> int:
    added, _ = ledger.record_changes(storage.key, storage.list_changes(None), "local")
    return added


def finish_with_input(
    ledger: Ledger, storage: LocalStorage, name: str, outcome: ItemStatus, area: Area | None
) -> Item:
    """A real file through discovery, claim, outcome and relocation."""
    (storage.area(Area.INPUT) / name).write_bytes(b"bytes of " + name.encode())
    assert discover_all(ledger, storage) == 1
    item = ledger.claim_next()
    assert item is not None
    reason = "job failed: InternalError" if outcome is FAILED else None
    item = ledger.transition(
        item.id,
        ItemStatus.PROCESSING,
        outcome,
        outcome.value,
        {
            "last_error": reason,
            "finished_at": ledger.clock(),
            "job_id": "old-job",
            "status_url": "https://old",
        },
    )
    if area is not None:
        moved = storage.relocate(item.as_file(), area)
        ledger.mark_relocated(item, f"{area.value}/{moved}", f"moved_to_{area.value}")
    got = ledger.get(item.id)
    assert got is not None
    return got


def test_a_local_move_keeps_the_rev(storage: LocalStorage) -> None:
    """Why a requeued row is re-activated: moving a file out and back keeps its rev."""
    path = storage.area(Area.INPUT) / "a.jpg"
    path.write_bytes(b"content")
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_123_456_789))
    rev = storage.current_rev("a.jpg")
    moved = storage.relocate(remote("a.jpg", rev=rev), Area.FAILED)
    assert storage.current_rev("a.jpg") is None
    assert storage.restore(Area.FAILED, moved, "a.jpg") == "a.jpg"
    assert storage.current_rev("a.jpg") == rev


def test_retry_moves_back_from_failed_and_reuses_the_row(
    ledger: Ledger, storage: LocalStorage, requeuer: Requeuer
) -> None:
    failed = finish_with_input(ledger, storage, "a.jpg", FAILED, Area.FAILED)
    assert (storage.area(Area.FAILED) / "a.jpg").exists()
    item = requeuer.latest("a.jpg", FAILED)
    result = requeuer.requeue_failed(item)
    assert (result.previous, result.restored_from, result.superseded) == (
        FAILED,
        "failed/a.jpg",
        False,
    )
    assert (storage.area(Area.INPUT) / "a.jpg").exists()
    assert not (storage.area(Area.FAILED) / "a.jpg").exists()
    row = result.item
    assert (row.id, row.status, row.attempts, row.rev) == (
        failed.id,
        ItemStatus.PENDING,
        0,
        failed.rev,
    )
    assert (row.last_error, row.job_id, row.archived_path, row.next_attempt_at) == (None,) * 4
    # the daemon's next scan finds (path, rev) known: no second row; the old one is due
    assert discover_all(ledger, storage) == 0
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == failed.id
    events = ledger.events(failed.id)
    requested = next(e for e in events if e["event"] == "retry_requested")
    assert requested["actor"] == "cli:tester@host"
    assert (requested["from_status"], requested["to_status"]) == ("failed", "pending")
    assert requested["detail"] == {
        "input": "failed/a.jpg",
        "previous_error": "job failed: InternalError",
    }
    assert [e["event"] for e in events][-3:] == ["retry_requested", "input_restored", "claimed"]


def test_reprocess_moves_back_from_archive(
    ledger: Ledger, storage: LocalStorage, requeuer: Requeuer
) -> None:
    done = finish_with_input(ledger, storage, "mug.jpg", SUCCEEDED, Area.ARCHIVE)
    with pytest.raises(
        AuditArgumentError, match="is succeeded, not failed; use `cutoutd reprocess`"
    ):
        requeuer.latest("mug.jpg", FAILED)
    result = requeuer.reprocess(requeuer.latest("archive/mug.jpg", SUCCEEDED))
    assert (result.item.id, result.item.status, result.restored_from) == (
        done.id,
        ItemStatus.PENDING,
        "archive/mug.jpg",
    )
    assert result.item.job_id is None  # a new engine run, not a resumed job
    assert (storage.area(Area.INPUT) / "mug.jpg").exists()
    assert discover_all(ledger, storage) == 0
    assert [e["event"] for e in ledger.events(done.id)][-2:] == [
        "reprocess_requested",
        "input_restored",
    ]


def test_input_still_in_place_is_requeued_without_a_move(
    ledger: Ledger, storage: LocalStorage, requeuer: Requeuer
) -> None:
    done = finish_with_input(ledger, storage, "kept.jpg", SUCCEEDED, None)  # policy keep
    result = requeuer.reprocess(done)
    assert (result.restored_from, result.item.status, result.item.next_attempt_at) == (
        None,
        ItemStatus.PENDING,
        None,
    )
    assert discover_all(ledger, storage) == 0


def test_a_changed_file_becomes_a_new_revision(
    ledger: Ledger, storage: LocalStorage, requeuer: Requeuer
) -> None:
    """Fixed in failed/ before the retry: a new rev, so the old row is superseded."""
    failed = finish_with_input(ledger, storage, "b.jpg", FAILED, Area.FAILED)
    (storage.area(Area.FAILED) / "b.jpg").write_bytes(b"a repaired image")
    result = requeuer.requeue_failed(failed)
    assert result.superseded and result.item.status is SKIPPED
    assert (result.item.last_error or "").startswith("superseded: input/b.jpg came back as a new")
    assert discover_all(ledger, storage) == 1
    newest = requeuer.audit.show("b.jpg")[-1].item
    assert (newest.status, newest.id > failed.id) == (ItemStatus.PENDING, True)


@pytest.mark.parametrize("problem", ["deleted", "slot taken", "archive gone"])
def test_requeue_refuses_when_the_input_cannot_come_back(
    ledger: Ledger, storage: LocalStorage, requeuer: Requeuer, problem: str
) -> None:
    area = None if problem == "deleted" else Area.FAILED
    failed = finish_with_input(ledger, storage, "c.jpg", FAILED, area)
    if problem == "deleted":
        (storage.area(Area.INPUT) / "c.jpg").unlink()
    elif problem == "slot taken":
        (storage.area(Area.INPUT) / "c.jpg").write_bytes(b"someone else")
    else:
        (storage.area(Area.FAILED) / "c.jpg").unlink()
    message = {
        "deleted": "is gone and no copy was moved aside",
        "slot taken": "holds another file now",
        "archive gone": "no longer there",
    }[problem]
    with pytest.raises(RequeueError, match=message):
        requeuer.requeue_failed(failed)
    assert ledger.get(failed.id) == failed  # untouched


def test_a_failed_move_puts_the_row_back(
    ledger: Ledger, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = finish_with_input(ledger, storage, "d.jpg", FAILED, Area.FAILED)

    def broken_restore(area: Area, path: str, to_path: str) -> str:
        raise TransientError("disk on fire")

    monkeypatch.setattr(storage, "restore", broken_restore)
    requeuer = Requeuer(ledger, storage, "cli:tester@host")
    with pytest.raises(RequeueError, match=r"cannot move failed/d\.jpg back into input/: disk"):
        requeuer.requeue_failed(failed)
    after = ledger.get(failed.id)
    assert after is not None
    assert (after.status, after.last_error, after.attempts, after.archived_path) == (
        FAILED,
        failed.last_error,
        failed.attempts,
        "failed/d.jpg",
    )
    assert [e["event"] for e in ledger.events(failed.id)][-2:] == [
        "retry_requested",
        "requeue_abandoned",
    ]


def test_failed_revisions_are_the_newest_of_each_file(
    ledger: Ledger, storage: LocalStorage, requeuer: Requeuer, clock: Clock
) -> None:
    history = History(ledger, clock)
    history.run("x.jpg", FAILED, reason="a", rev="1")
    history.run("x.jpg", FAILED, reason="b", rev="2")
    history.run("y.jpg", FAILED, reason="c", rev="1")
    history.run("y.jpg", SUCCEEDED, rev="2")
    clock.advance(3600)
    history.run("z.jpg", FAILED, reason="d")
    assert [(i.path, i.rev) for i in requeuer.failed_revisions()] == [
        ("x.jpg", "2"),
        ("z.jpg", "rev-z.jpg"),
    ]
    assert paths(requeuer.failed_revisions(since=START + timedelta(minutes=30))) == ["z.jpg"]
    old = requeuer.audit.show("x.jpg")[0].item
    with pytest.raises(AuditArgumentError, match=r"is not the newest revision of x\.jpg"):
        requeuer.latest(str(old.id), FAILED)
