"""The ledger port's contract: the same behaviour checks against the in-memory ledger
(tests/fakes/memory_ledger.py), a real SQLite file and real PostgreSQL, so the fake the
core's unit tests use cannot drift from the ledger the daemon runs on.

Only the port's operations are used (daemon.ledger_port.LedgerPort); no clock is
injected, so the checks hold whichever clock a ledger reads (the database's, later)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.errors import LostClaimError, PermanentItemError
from daemon.ledger import Ledger
from daemon.ledger_port import LedgerPort
from daemon.models import ChangeBatch, DeletedEntry, Item, ItemStatus, RemoteFile, SubmittedJob
from tests.fakes.memory_ledger import MemoryLedger
from tests.integration.conftest import fresh_database

HOUR = 3600.0


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerPort]:
    if request.param == "memory":
        yield MemoryLedger(node_id="host-a:1")
        return
    with fresh_database(request.param, tmp_path) as url:
        ledger = Ledger(url, node_id="host-a:1")
        ledger.migrate()
        try:
            yield ledger
        finally:
            ledger.close()


def file(path: str, rev: str = "0000000001", content_hash: str = "h" * 64) -> RemoteFile:
    return RemoteFile(
        path=path, path_lower=path.lower(), rev=rev, size=10, content_hash=content_hash
    )


def discover(ledger: LedgerPort, *paths: str, cursor: str = "c1") -> None:
    ledger.record_changes("s", ChangeBatch(tuple(file(p) for p in paths), cursor), "local")


def claim(ledger: LedgerPort) -> Item:
    item = ledger.claim_next()
    assert item is not None
    return item


def reread(ledger: LedgerPort, item: Item) -> Item:
    current = ledger.get(item.id)
    assert current is not None
    return current


def status_of(ledger: LedgerPort, item: Item) -> ItemStatus:
    return reread(ledger, item).status


def test_discovery_records_each_revision_once_with_its_cursor(ledger: LedgerPort) -> None:
    batch = ChangeBatch((file("a.jpg"), file("sub/b.jpg"), file("c.jpg")), "c1")
    assert ledger.record_changes("s", batch, "local") == (3, 0)
    assert ledger.record_changes("s", ChangeBatch(batch.changes, "c2"), "local") == (0, 0)
    assert ledger.get_cursor("s") == "c2" and ledger.get_cursor("other") is None
    gone = ChangeBatch((DeletedEntry("sub"), DeletedEntry("c.jpg")), "c3")
    assert ledger.record_changes("s", gone, "local") == (0, 2)  # a folder takes its files
    assert ledger.counts()[ItemStatus.SKIPPED] == 2
    ledger.reset_cursor("s")
    assert ledger.get_cursor("s") is None


def test_claims_take_the_oldest_due_revision_once(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg", "b.jpg")
    first, second = claim(ledger), claim(ledger)
    assert (first.path, second.path) == ("a.jpg", "b.jpg")
    assert (first.status, first.attempts) == (ItemStatus.PROCESSING, 1)
    assert ledger.claim_next() is None
    assert ledger.next_due_at() is None
    assert ledger.counts()[ItemStatus.PROCESSING] == 2


def test_success_records_the_outputs_and_owes_the_move(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg")
    item = claim(ledger)
    ledger.succeed(item, ["a.png", "small/a.png"], "local", "default", "archive")
    done = ledger.get(item.id)
    assert done is not None
    assert (done.status, done.output_path, done.last_error) == (
        ItemStatus.SUCCEEDED,
        "a.png",
        None,
    )
    assert done.finished_at is not None
    assert [(i.id, target) for i, target in ledger.pending_relocations()] == [(item.id, "archive")]
    with pytest.raises(LostClaimError):  # the claim ended: a second outcome is refused
        ledger.fail(item, "too late", "failed")
    ledger.mark_relocated(item, "archive/a.jpg", "moved_to_archive")
    assert ledger.pending_relocations() == []
    moved = ledger.get(item.id)
    assert moved is not None and moved.archived_path == "archive/a.jpg"
    finished = ledger.finished_since(done.finished_at - timedelta(seconds=1))
    assert finished == {ItemStatus.SUCCEEDED: 1}


def test_failures_and_skips_keep_their_reason(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg", "b.jpg", "c.jpg")
    failed, skipped, duplicate = claim(ledger), claim(ledger), claim(ledger)
    ledger.fail(failed, "not an image", "failed")
    ledger.skip(skipped, "gone from input/", None)
    ledger.skip(duplicate, "duplicate of a.jpg", "archive", output="c.png")
    ended = [reread(ledger, i) for i in (failed, skipped, duplicate)]
    reasons = {i.path: (i.status, i.last_error, i.output_path) for i in ended}
    assert reasons == {
        "a.jpg": (ItemStatus.FAILED, "not an image", None),
        "b.jpg": (ItemStatus.SKIPPED, "gone from input/", None),
        "c.jpg": (ItemStatus.SKIPPED, "duplicate of a.jpg", "c.png"),
    }
    owed = {i.path: target for i, target in ledger.pending_relocations()}
    assert owed == {"a.jpg": "failed", "c.jpg": "archive"}
    ledger.clear_relocation(failed, "input changed; left in place")
    assert [i.path for i, _ in ledger.pending_relocations()] == ["c.jpg"]


def test_a_scheduled_retry_waits_its_delay(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg")
    item = claim(ledger)
    ledger.record_submission(item, SubmittedJob("job-1", "https://status/1"), resubmitted=False)
    before = ledger.clock()
    ledger.schedule_retry(item, error="HTTP 503", delay=HOUR)
    assert ledger.claim_next() is None
    due = ledger.next_due_at()
    assert due is not None and due >= before + timedelta(seconds=HOUR - 5)
    waiting = ledger.get(item.id)
    assert waiting is not None
    assert (waiting.status, waiting.last_error, waiting.job_id) == (
        ItemStatus.PENDING,
        "HTTP 503",
        "job-1",  # kept: the next attempt resumes the job
    )


def test_a_retry_can_forget_the_job_and_keep_an_attempt(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg")
    item = claim(ledger)
    ledger.record_submission(item, SubmittedJob("job-1", "https://status/1"), resubmitted=False)
    ledger.schedule_retry(item, error="stale", delay=0, forget_job=True)
    again = claim(ledger)
    assert (again.id, again.attempts, again.job_id, again.status_url) == (item.id, 2, None, None)
    ledger.schedule_retry(again, error="unreachable", delay=0, max_attempts=2)
    third = claim(ledger)
    assert third.attempts == 2  # kept below 2, then this claim counted
    ledger.succeed(third, ["a.png"], "local", "default", None)
    with pytest.raises(LostClaimError):
        ledger.schedule_retry(third, error="late", delay=0)


def test_a_release_gives_the_attempt_back(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg", "b.jpg")
    a, b = claim(ledger), claim(ledger)
    ledger.release(a, "stopping")
    ledger.release(b, "rate-limited", delay=HOUR)
    again = claim(ledger)
    assert (again.id, again.attempts) == (a.id, 1)
    assert ledger.claim_next() is None  # b waits out its delay
    assert status_of(ledger, b) == ItemStatus.PENDING
    with pytest.raises(LostClaimError):
        ledger.release(b, "twice")


def test_a_submission_needs_the_claim(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg")
    item = claim(ledger)
    ledger.release(item, "stopping")
    with pytest.raises(LostClaimError):
        ledger.record_submission(item, SubmittedJob("job-1", "https://s"), resubmitted=False)


def test_output_names_belong_to_one_input(ledger: LedgerPort) -> None:
    discover(ledger, "A.jpg", "a.png", "b.jpg")
    upper, lower, other = claim(ledger), claim(ledger), claim(ledger)
    assert ledger.reserve_output(upper, 0, "spec", ["A.png", "A.jpg.png"]) == "A.png"
    assert ledger.reserve_output(upper, 0, "spec", ["A.png", "A.jpg.png"]) == "A.png"  # a re-run
    # Dropbox ignores case: a.png would overwrite A.png; a local folder keeps both
    assert ledger.reserve_output(lower, 0, "spec", ["a.png", "a.png.png"]) == "a.png.png"
    assert ledger.reserve_output(other, 0, "spec", ["A.PNG"], fold_case=False) == "A.PNG"
    with pytest.raises(PermanentItemError):
        ledger.reserve_output(other, 1, "spec", ["a.PNG"])
    ledger.record_output_written(upper, 0, 123)
    [record] = ledger.outputs_of(upper.id)
    assert (record.slot, record.path, record.bytes) == (0, "A.png", 123)
    with pytest.raises(LostClaimError):
        ledger.record_output_written(upper, 5, 1)  # never reserved


def test_duplicates_are_found_by_content(ledger: LedgerPort) -> None:
    ledger.record_changes(
        "s",
        ChangeBatch(
            (file("a.jpg", content_hash="x" * 64), file("b.jpg", content_hash="x" * 64)), "c1"
        ),
        "local",
    )
    first, second = claim(ledger), claim(ledger)
    assert ledger.find_succeeded_duplicate("x" * 64, second.id) is None
    ledger.succeed(first, ["a.png"], "local", "default", None)
    duplicate = ledger.find_succeeded_duplicate("x" * 64, second.id)
    assert duplicate is not None and duplicate.id == first.id


def test_recovery_puts_back_what_this_host_left_processing(ledger: LedgerPort) -> None:
    discover(ledger, "a.jpg", "b.jpg")
    item = claim(ledger)
    ledger.record_submission(item, SubmittedJob("job-1", "https://s"), resubmitted=False)
    recovered = ledger.recover_expired()
    assert [i.id for i in recovered] == [item.id]
    back = ledger.get(item.id)
    assert back is not None
    assert (back.status, back.job_id) == (ItemStatus.PENDING, "job-1")
    assert ledger.recover_expired() == []
    with pytest.raises(LostClaimError):  # the claim the crash left is gone
        ledger.succeed(item, ["a.png"], "local", "default", None)
