"""The real `cutoutd ledger ...`, `retry` and `reprocess` commands, run as subprocesses on a
ledger written by a real run of the pipeline (real folder, real SQLite file, the fast
chroma-key engine)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import TransientError
from daemon.service import Service
from tests.e2e.conftest import run_cutoutd
from tests.helpers import ChromaKeyEngine, write_shape

LIST_HEADER = (
    "id,path,rev,content_hash,status,attempts,engine,job_id,output_path,archived_path,error,"
    "discovered_at,started_at,finished_at,archived_at"
)


@dataclass
class Audited:
    root: Path
    config: Path
    ledger: Path
    make_service: Callable[..., Service]

    def cutoutd(self, *args: str) -> Any:
        return run_cutoutd("--config", str(self.config), *args, timeout=60)

    def json(self, *args: str) -> Any:
        result = self.cutoutd(*args, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def run_daemon(self, engine: ChromaKeyEngine | None = None) -> None:
        self.make_service(engine or ChromaKeyEngine(), engine={"workers": 1}).run_once()


@pytest.fixture
def audited(
    make_service: Callable[..., Service],
    root: Path,
    tmp_path: Path,
    write_config: Callable[..., Path],
) -> Audited:
    """flaky.jpg failed after three engine errors; then mug.jpg and cup.png succeeded,
    repeat.jpg (mug's bytes) was skipped as a duplicate, broken.jpg failed (not an image)."""
    write_shape(root / "input" / "flaky.jpg", color=(0, 90, 200))
    flaky = ChromaKeyEngine()
    flaky.fail_with = [TransientError("engine down")] * 3
    make_service(flaky, engine={"workers": 1}).run_once()
    write_shape(root / "input" / "mug.jpg")
    write_shape(root / "input" / "cup.png", shape="rectangle", color=(20, 160, 40))
    shutil.copy(root / "input" / "mug.jpg", root / "input" / "repeat.jpg")
    (root / "input" / "broken.jpg").write_text("not an image")
    make_service(ChromaKeyEngine(), engine={"workers": 1}).run_once()
    assert (root / "failed" / "flaky.jpg").exists() and (root / "archive" / "mug.jpg").exists()
    return Audited(root, write_config(root), tmp_path / "ledger.sqlite3", make_service)


def test_list_formats_filters_and_order(audited: Audited) -> None:
    rows = audited.json("ledger", "list")
    newest_first = ["repeat.jpg", "mug.jpg", "cup.png", "broken.jpg", "flaky.jpg"]
    assert [r["path"] for r in rows] == newest_first
    assert {r["path"]: r["status"] for r in rows}["repeat.jpg"] == "skipped"
    table = audited.cutoutd("ledger", "list", "--format", "table")
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "ATTEMPTS",
        "PATH",
        "OUTPUT_PATH",
        "DISCOVERED_AT",
        "ERROR",
    ]
    column = lines[0].index("PATH")
    assert all(line[column:].split()[0].endswith((".jpg", ".png")) for line in lines[1:])
    listing = audited.cutoutd("ledger", "list", "--format", "csv", "--sort", "path")
    assert listing.stdout.splitlines()[0] == LIST_HEADER
    parsed = list(csv.DictReader(io.StringIO(listing.stdout)))
    assert [r["path"] for r in parsed] == sorted(newest_first)

    def paths(*args: str) -> list[str]:
        return [r["path"] for r in audited.json("ledger", "list", *args)]

    assert paths("--status", "failed") == ["broken.jpg", "flaky.jpg"]
    oldest = ["cup.png", "mug.jpg", "repeat.jpg"]
    assert paths("--status", "succeeded,skipped", "--sort", "oldest") == oldest
    assert paths("--path", "*.PNG") == ["cup.png"]
    assert paths("--path", "?u*", "--reverse") == ["cup.png", "mug.jpg"]
    assert paths("--engine", "photoshop") == []
    assert len(paths("--engine", "local", "--since", "1h", "--limit", "2")) == 2
    assert paths("--until", "2000-01-01") == []


def test_show_gives_every_event_with_durations(audited: Audited) -> None:
    [revision] = audited.json("ledger", "show", "flaky.jpg")
    events = [e["event"] for e in revision["events"]]
    assert events == [
        "discovered",
        "claimed",
        "retry_scheduled",
        "claimed",
        "retry_scheduled",
        "claimed",
        "failed",
        "moved_to_failed",
    ]
    assert revision["status"] == "failed" and revision["archived_path"] == "failed/flaky.jpg"
    assert revision["events"][0]["since_previous_s"] is None
    assert all(e["since_previous_s"] >= 0 for e in revision["events"][1:])
    assert revision["events"][-2]["detail"]["reason"].startswith("gave up after 3 attempts")
    by_id = audited.json("ledger", "show", str(revision["id"]))
    assert by_id == [revision]
    assert audited.json("ledger", "show", "failed/flaky.jpg") == [revision]
    table = audited.cutoutd("ledger", "show", "mug.jpg", "--format", "table")
    assert table.returncode == 0
    assert table.stdout.startswith("#") and "+STEP" in table.stdout
    assert "moved_to_archive" in table.stdout and "output: output/mug.png" in table.stdout
    [mug] = audited.json("ledger", "show", "mug.jpg")
    assert [e["event"] for e in mug["events"]] == [
        "discovered",
        "claimed",
        "result_received",
        "succeeded",
        "moved_to_archive",
    ]
    assert mug["events"][2]["detail"]["engine"] == "local"
    assert mug["events"][3]["detail"]["output"] == "mug.png"
    rows = audited.cutoutd("ledger", "show", "mug.jpg", "--format", "csv").stdout.splitlines()
    assert rows[0] == (
        "event_id,item_id,path,rev,at,event,from_status,to_status,actor,"
        "since_previous_s,since_start_s,detail"
    )
    assert len(rows) == 1 + 5


def test_stats(audited: Audited) -> None:
    stats = audited.json("ledger", "stats", "--by", "hour")
    assert stats["counts"] == {
        "pending": 0,
        "processing": 0,
        "succeeded": 2,
        "failed": 2,
        "skipped": 1,
    }
    assert stats["processed"] == 5 and stats["images_per_hour"] > 0
    assert stats["latency"]["count"] == 2 and stats["latency"]["p50_s"] > 0
    assert stats["engine_latency"]["p95_s"] >= stats["engine_latency"]["p50_s"] > 0
    assert (stats["engine_submissions"], stats["duplicates_skipped"]) == (0, 1)
    reasons = {f["reason"]: f["count"] for f in stats["failures"]}
    assert reasons["gave up after 3 attempts: engine down"] == 1
    assert sum(p["succeeded"] + p["failed"] + p["skipped"] for p in stats["periods"]) == 5
    table = audited.cutoutd("ledger", "stats", "--by", "day", "--since", "1d", "--format", "table")
    assert table.returncode == 0
    for label in (
        "succeeded",
        "latency p50/p95",
        "engine submissions",
        "skipped duplicates",
        "failures by reason",
        "by day",
    ):
        assert label in table.stdout
    future = audited.json("ledger", "stats", "--since", "2100-01-01")
    assert (future["processed"], future["images_per_hour"]) == (0, None)


def test_export_streams_jsonl_and_csv(audited: Audited) -> None:
    result = audited.cutoutd("ledger", "export")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [
        "flaky.jpg",
        "broken.jpg",
        "cup.png",
        "mug.jpg",
        "repeat.jpg",
    ]
    as_csv = audited.cutoutd("ledger", "export", "--format", "csv", "--status", "failed")
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout.splitlines()[0] == LIST_HEADER
    assert len(as_csv.stdout.splitlines()) == 3
    events = audited.cutoutd("ledger", "export", "--events", "--since", "1h")
    assert events.returncode == 0, events.stderr
    parsed = [json.loads(line) for line in events.stdout.splitlines()]
    assert {"discovered", "claimed", "succeeded", "failed", "skipped"} <= {
        e["event"] for e in parsed
    }
    assert all(e["path"] and e["rev"] and e["at"] for e in parsed)
    csv_events = audited.cutoutd("ledger", "export", "--events", "--format", "csv")
    assert csv_events.returncode == 0, csv_events.stderr
    assert csv_events.stdout.splitlines()[0] == (
        "event_id,item_id,path,rev,at,event,from_status,to_status,actor,detail"
    )
    empty = audited.cutoutd("ledger", "export", "--format", "csv", "--since", "2100-01-01")
    assert empty.returncode == 0 and empty.stdout.splitlines() == [LIST_HEADER]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ledger", "list", "--status", "bogus"], "unknown status 'bogus'"),
        (["ledger", "list", "--since", "yesterday"], "not a date or a relative time"),
        (["ledger", "list", "--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["ledger", "list", "--limit", "0"], "--limit must be at least 1"),
        (["ledger", "list", "--engine", "gpu"], "invalid choice: 'gpu'"),
        (["ledger", "show", "missing.jpg"], "no revision of 'missing.jpg' in the ledger"),
        (["ledger", "show", "424242"], "no revision of '424242'"),
        (["ledger", "stats", "--by", "week"], "invalid choice: 'week'"),
        (["ledger", "stats", "--until", "2026-13-01"], "not a date"),
        (["ledger", "stats", "--since", "1990-01-01", "--by", "hour"], "periods; narrow"),
        (["ledger", "export", "--format", "xml"], "invalid choice: 'xml'"),
        (["ledger", "export", "--events", "--status", "failed"], "--events takes only"),
        (["retry"], "give a PATH or ID to retry, or --status failed"),
        (["retry", "missing.jpg"], "no revision of 'missing.jpg'"),
        (["retry", "mug.jpg"], "is succeeded, not failed; use `cutoutd reprocess`"),
        (["retry", "--status", "succeeded"], "retry takes --status failed only"),
        (["retry", "--status", "nope"], "unknown status 'nope'"),
        (["retry", "flaky.jpg", "--status", "failed"], "not both"),
        (["reprocess", "flaky.jpg"], "is failed, not succeeded; use `cutoutd retry`"),
        (["reprocess"], "the following arguments are required: PATH|ID"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    audited: Audited, args: list[str], message: str
) -> None:
    result = audited.cutoutd(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""


def test_retry_moves_back_from_failed_and_the_daemon_reuses_the_row(audited: Audited) -> None:
    [requeued] = audited.json("retry", "flaky.jpg")
    assert requeued["restored_from"] == "failed/flaky.jpg"
    assert (requeued["previous_status"], requeued["status"]) == ("failed", "pending")
    assert (audited.root / "input" / "flaky.jpg").exists()
    assert not (audited.root / "failed" / "flaky.jpg").exists()
    audited.run_daemon()
    [revision] = audited.json("ledger", "show", "flaky.jpg")
    assert revision["id"] == requeued["id"] and revision["status"] == "succeeded"
    assert (audited.root / "output" / "flaky.png").exists()
    assert (audited.root / "archive" / "flaky.jpg").exists()
    requested = next(e for e in revision["events"] if e["event"] == "retry_requested")
    assert requested["actor"].startswith("cli:") and "@" in requested["actor"]
    assert requested["detail"]["input"] == "failed/flaky.jpg"
    assert [e["event"] for e in revision["events"]][-6:] == [
        "retry_requested",
        "input_restored",
        "claimed",
        "result_received",
        "succeeded",
        "moved_to_archive",
    ]


def test_retry_every_failure_since(audited: Audited) -> None:
    requeued = audited.json("retry", "--status", "failed", "--since", "1h")
    assert sorted(r["path"] for r in requeued) == ["broken.jpg", "flaky.jpg"]
    audited.run_daemon()
    statuses = {r["path"]: r["status"] for r in audited.json("ledger", "list")}
    assert (statuses["flaky.jpg"], statuses["broken.jpg"]) == ("succeeded", "failed")
    assert len(statuses) == 5  # no second row for either
    assert (audited.root / "failed" / "broken.jpg").exists()
    nothing = audited.cutoutd("retry", "--status", "failed", "--until", "2000-01-01")
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "[]")


def test_reprocess_runs_a_succeeded_image_again(audited: Audited) -> None:
    output = audited.root / "output" / "mug.png"
    before = output.stat().st_mtime_ns
    result = audited.cutoutd("reprocess", "mug.jpg", "--format", "table")
    assert result.returncode == 0, result.stderr
    assert "archive/mug.jpg" in result.stdout and "pending" in result.stdout
    assert (audited.root / "input" / "mug.jpg").exists()
    engine = ChromaKeyEngine()
    audited.run_daemon(engine)
    assert engine.calls == 1
    assert output.stat().st_mtime_ns > before
    [revision] = audited.json("ledger", "show", "mug.jpg")
    assert revision["status"] == "succeeded"
    assert [e["event"] for e in revision["events"]].count("succeeded") == 2
    assert any(e["event"] == "reprocess_requested" for e in revision["events"])


@pytest.fixture
def writer_holding_the_lock(audited: Audited) -> Iterator[Callable[[float], None]]:
    """Another process's write transaction (BEGIN IMMEDIATE, uncommitted change) held open
    for up to `seconds`, or until the test ends."""
    threads: list[threading.Thread] = []
    done = threading.Event()

    def hold(seconds: float) -> None:
        locked = threading.Event()

        def run() -> None:
            connection = sqlite3.connect(audited.ledger, isolation_level=None)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("UPDATE cursors SET cursor = cursor || '-'")
            locked.set()
            done.wait(seconds)
            connection.execute("COMMIT")
            connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        assert locked.wait(5)

    yield hold
    done.set()
    for thread in threads:
        thread.join()


def test_commands_answer_while_a_writer_holds_the_ledger(
    audited: Audited, writer_holding_the_lock: Callable[[float], None]
) -> None:
    writer_holding_the_lock(20)
    for args in (
        ["ledger", "list"],
        ["ledger", "show", "mug.jpg"],
        ["ledger", "stats"],
        ["ledger", "export", "--format", "csv"],
    ):
        started = time.monotonic()
        result = audited.cutoutd(*args)
        assert result.returncode == 0, result.stderr
        assert "locked" not in result.stderr
        assert time.monotonic() - started < 10, args  # answered, not waiting on the writer


def test_retry_waits_for_a_short_write_then_goes_ahead(
    audited: Audited, writer_holding_the_lock: Callable[[float], None]
) -> None:
    writer_holding_the_lock(1.5)
    result = audited.cutoutd("retry", "broken.jpg", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["status"] == "pending"
