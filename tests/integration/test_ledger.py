"""The ledger on real SQLite files and real PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.errors import LostClaimError
from daemon.ledger import Ledger
from daemon.ledger.database import current_revision, head_revision
from daemon.models import ChangeBatch, DeletedEntry, ItemStatus, RemoteFile, SubmittedJob


def file(path: str, rev: str = "015f1a2b3c", content_hash: str = "h" * 64) -> RemoteFile:
    return RemoteFile(
        path=path, path_lower=path.lower(), rev=rev, size=10, content_hash=content_hash
    )


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    ledger = Ledger(ledger_url, node_id="host-a:1")
    ledger.migrate()
    yield ledger
    ledger.close()


def test_migrations_reach_head_and_are_idempotent(ledger: Ledger) -> None:
    assert current_revision(ledger.engine) == head_revision()
    assert ledger.migrate() is False


def test_rows_and_cursor_commit_together(ledger: Ledger) -> None:
    batch = ChangeBatch((file("a.jpg"), file("b.jpg")), cursor="c1")
    assert ledger.record_changes("store", batch, "local") == (2, 0)
    assert ledger.get_cursor("store") == "c1"
    # replaying the same page (a cursor reset) creates nothing new
    assert ledger.record_changes("store", ChangeBatch(batch.changes, "c2"), "local") == (0, 0)
    assert ledger.get_cursor("store") == "c2"
    assert len(ledger.list_items()) == 2


def test_new_rev_is_a_new_row(ledger: Ledger) -> None:
    ledger.record_changes("s", ChangeBatch((file("a.jpg", rev="0000000001"),), "c1"), "local")
    ledger.record_changes("s", ChangeBatch((file("a.jpg", rev="0000000002"),), "c2"), "local")
    assert [i.rev for i in ledger.list_items(newest_first=False)] == ["0000000001", "0000000002"]


def test_deleted_entry_skips_pending_revisions(ledger: Ledger) -> None:
    ledger.record_changes("s", ChangeBatch((file("A.jpg"),), "c1"), "local")
    assert ledger.record_changes("s", ChangeBatch((DeletedEntry("a.jpg"),), "c2"), "local") == (
        0,
        1,
    )
    [item] = ledger.list_items()
    assert (item.status, item.last_error) == (ItemStatus.SKIPPED, "deleted before processing")


def test_claim_is_compare_and_set(ledger: Ledger, ledger_url: str) -> None:
    ledger.record_changes("s", ChangeBatch((file("a.jpg"),), "c1"), "local")
    other = Ledger(ledger_url, node_id="host-b:2")
    try:
        first = ledger.claim_next()
        assert first is not None and first.attempts == 1
        assert other.claim_next() is None
        with pytest.raises(LostClaimError):
            other.transition(first.id, ItemStatus.PENDING, ItemStatus.PROCESSING, "claimed")
    finally:
        other.close()


def test_concurrent_claims_never_hand_out_an_item_twice(ledger: Ledger, ledger_url: str) -> None:
    ledger.record_changes(
        "s", ChangeBatch(tuple(file(f"{n}.jpg") for n in range(40)), "c"), "local"
    )
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        mine = Ledger(ledger_url, node_id=name)
        try:
            while (item := mine.claim_next()) is not None:
                with lock:
                    claimed.append(item.id)
        finally:
            mine.close()

    threads = [threading.Thread(target=worker, args=(f"w{n}:1",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40


def test_submission_stored_and_recovered(ledger: Ledger) -> None:
    ledger.record_changes("s", ChangeBatch((file("a.jpg"),), "c1"), "photoshop")
    item = ledger.claim_next()
    assert item is not None
    ledger.record_submission(
        item, SubmittedJob("urn:ff:jobs:1", "http://x/status/1"), resubmitted=False
    )
    restarted = Ledger(ledger.url, node_id="host-a:99")
    recovered = restarted.recover_expired()
    restarted.close()
    assert [r.id for r in recovered] == [item.id]
    again = ledger.get(item.id)
    assert again is not None
    assert (again.status, again.job_id, again.status_url) == (
        ItemStatus.PENDING,
        "urn:ff:jobs:1",
        "http://x/status/1",
    )
    names = [e["event"] for e in ledger.events(item.id)]
    assert names == ["discovered", "claimed", "submitted", "recovered"]


def test_other_hosts_claims_wait_for_their_lease(ledger: Ledger) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    remote = Ledger(ledger.url, node_id="host-b:7", clock=lambda: now[0], lease_seconds=60)
    try:
        remote.record_changes("s", ChangeBatch((file("a.jpg"),), "c1"), "local")
        assert remote.claim_next() is not None
        local = Ledger(ledger.url, node_id="host-a:1", clock=lambda: now[0])
        assert local.recover_expired() == []
        now[0] += timedelta(seconds=61)
        assert len(local.recover_expired()) == 1
        local.close()
    finally:
        remote.close()


def test_retry_timing_is_data(ledger: Ledger) -> None:
    ledger.record_changes("s", ChangeBatch((file("a.jpg"),), "c1"), "local")
    item = ledger.claim_next()
    assert item is not None
    later = ledger.clock() + timedelta(hours=1)
    ledger.transition(item.id, ItemStatus.PROCESSING, ItemStatus.PENDING, "retry_scheduled",
                      {"next_attempt_at": later, "last_error": "boom"})  # fmt: skip
    assert ledger.claim_next() is None
    due = ledger.next_due_at()
    assert due is not None and abs((due - later).total_seconds()) < 1


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite3"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.migrate()
    ledger.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_reader_is_not_blocked_by_a_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    ledger = Ledger(url)
    ledger.migrate()
    ledger.record_changes("s", ChangeBatch((file("a.jpg"),), "c1"), "local")
    writer = sqlite3.connect(tmp_path / "l.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE items SET attempts = 7")
    from daemon.ledger.queries import LedgerReader

    reader = LedgerReader(url, writer=False)
    assert [i.attempts for i in reader.list_items()] == [0]
    writer.execute("COMMIT")
    writer.close()
    reader.close()
    ledger.close()


def test_head_revision_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from daemon.ledger.database import _alembic_config

    assert head_revision() == ScriptDirectory.from_config(_alembic_config()).get_current_head()


def test_a_current_schema_costs_one_query_and_no_alembic(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    code = (
        "import sys; from daemon.ledger import Ledger; "
        f"ledger = Ledger({url!r}); upgraded = ledger.migrate(); ledger.close(); "
        "print(upgraded, 'alembic' in sys.modules)"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert [run.stdout.split() for run in runs] == [["True", "True"], ["False", "False"]]


def test_migration_0003_copies_existing_outputs(ledger_url: str) -> None:
    """A ledger from before profiles: each item's output_path becomes output slot 0, so
    ownership of names and `ledger show output/...` keep working after the upgrade."""
    from alembic import command
    from sqlalchemy import text

    from daemon.ledger.database import _alembic_config

    old = Ledger(ledger_url, node_id="host-a:1")
    config = _alembic_config()
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(
            text(
                "INSERT INTO items (path, path_lower, rev, content_hash, size, status, attempts,"
                " output_path, discovered_at, finished_at) VALUES ('A.jpg', 'a.jpg', 'r1', 'h',"
                " 1, 'succeeded', 1, 'A.png', '2026-11-01 00:00:00', '2026-11-01 00:00:05')"
            )
        )
    assert old.migrate() is True
    (item,) = old.list_items()
    (record,) = old.outputs_of(item.id)
    assert (record.slot, record.path, record.spec) == (0, "A.png", None)
    # the name stays A.jpg's: another input with that stem gets the fallback name
    old.record_changes("s", ChangeBatch((file("a.png"),), "c1"), "local")
    other = next(i for i in old.list_items() if i.path == "a.png")
    taken = old.reserve_output(other, 0, "spec", ["a.png", "a.png.png"])
    assert taken == "a.png.png"
    old.close()
