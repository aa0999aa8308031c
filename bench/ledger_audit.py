"""Benchmark the ledger audit queries on 1,000,000 synthetic revisions in SQLite.

    .venv/bin/python bench/ledger_audit.py [--count 1000000] [--cache /tmp/cutoutd-bench]

Builds (once, cached) a ledger with the real schema (Alembic head) holding `--count`
revisions and their events as the daemon writes them, then times `stats`, `show`, the
latest 100 (`list`), and streams `export` to /dev/null through the real `cutoutd`
command while sampling its resident memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.ledger.audit import ItemFilter, LedgerAudit, Sort
from daemon.ledger.queries import LedgerReader
from daemon.ledger.store import Ledger
from daemon.models import ItemStatus

GENERATOR_VERSION = 1
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=180)
FAILURES = (
    "not an image: cannot identify image file",
    "rejected by the API: input image too large",
    "job failed: InternalError",
    "gave up after 5 attempts: network down",
    "unreadable: Permission denied",
)
Row = tuple[Any, ...]


def stamp(moment: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text for a UTC instant."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class Generator:
    """Revisions and events in the shapes the pipeline records them."""

    def __init__(self, count: int, seed: int = 5) -> None:
        self.count = count
        self.random = random.Random(seed)
        self.step = SPAN / count
        self.event_id = 0

    def event(
        self, item_id: int, at: datetime, name: str, old: str | None, new: str | None, **kw: Any
    ) -> Row:
        self.event_id += 1
        detail = json.dumps(kw, sort_keys=True) if kw else None
        return (self.event_id, item_id, stamp(at), name, old, new, "bench-1:4242", detail)

    def revision(self, item_id: int) -> tuple[Row, list[Row]]:
        r = self.random
        found = START + self.step * item_id
        path = f"batch{item_id // 5000:04d}/IMG_{item_id:07d}.jpg"
        content = hashlib.sha256(str(item_id).encode()).hexdigest()
        engine = "photoshop" if r.random() < 0.8 else "local"
        roll = r.random()
        status = (
            "succeeded"
            if roll < 0.9
            else "skipped"
            if roll < 0.95
            else "failed"
            if roll < 0.98
            else "pending"
            if roll < 0.995
            else "processing"
        )
        events = [self.event(item_id, found, "discovered", None, "pending", size=123456)]
        claimed = found + timedelta(seconds=r.uniform(0.2, 20))
        done = claimed + timedelta(seconds=r.lognormvariate(1.8, 0.5))
        values: dict[str, Any] = {"started": None, "finished": None, "error": None}
        values["archived"] = None
        job = f"job-{item_id:08x}"
        if status != "pending":
            values["started"] = claimed
            events.append(self.event(item_id, claimed, "claimed", "pending", "processing"))
        if engine == "photoshop" and status in ("succeeded", "failed", "processing"):
            at = claimed + timedelta(seconds=0.4)
            events.append(self.event(item_id, at, "submitted", None, None, job_id=job))
            if r.random() < 0.05:
                events.append(
                    self.event(
                        item_id,
                        at + timedelta(seconds=2),
                        "resubmitted",
                        None,
                        None,
                        job_id=job + "b",
                    )
                )
        if status == "succeeded":
            values["finished"] = done
            events.append(
                self.event(
                    item_id,
                    done,
                    "succeeded",
                    "processing",
                    "succeeded",
                    output=path[:-3] + "png",
                    bytes=234567,
                )
            )
        elif status == "skipped":
            values["finished"] = claimed + timedelta(seconds=0.05)
            values["error"] = f"duplicate of batch0000/IMG_{item_id % 997:07d}.jpg; output reused"
            if r.random() < 0.1:
                values["error"] = "deleted before processing"
            events.append(
                self.event(
                    item_id,
                    values["finished"],
                    "skipped",
                    "processing",
                    "skipped",
                    reason=values["error"],
                )
            )
        elif status == "failed":
            values["finished"] = done
            values["error"] = r.choice(FAILURES)
            events.append(
                self.event(item_id, done, "failed", "processing", "failed", reason=values["error"])
            )
        if status in ("succeeded", "skipped", "failed"):
            area = "failed" if status == "failed" else "archive"
            values["archived"] = values["finished"] + timedelta(seconds=0.1)
            events.append(
                self.event(
                    item_id,
                    values["archived"],
                    f"moved_to_{area}",
                    None,
                    None,
                    path=f"{area}/{path}",
                )
            )
        row = (
            item_id,
            path,
            path,
            f"{item_id:012x}",
            content,
            123456,
            status,
            0 if status == "pending" else 1,
            None,
            values["error"],
            engine,
            job if engine == "photoshop" and status != "pending" else None,
            None,
            path[:-3] + "png" if status == "succeeded" else None,
            None,
            f"{'failed' if status == 'failed' else 'archive'}/{path}"
            if values["archived"]
            else None,
            "bench-1:4242" if status == "processing" else None,
            None,
            stamp(found),
            *(
                stamp(v) if v else None
                for v in (values["started"], values["finished"], values["archived"])
            ),
        )
        return row, events

    def batches(self, size: int = 50_000) -> Iterator[tuple[list[Row], list[Row]]]:
        for first in range(1, self.count + 1, size):
            items: list[Row] = []
            events: list[Row] = []
            for item_id in range(first, min(first + size, self.count + 1)):
                row, its_events = self.revision(item_id)
                items.append(row)
                events.extend(its_events)
            yield items, events


def build(path: Path, count: int) -> None:
    """The real schema (migrations), then bulk inserts in big transactions."""
    temporary = path.with_suffix(".building")
    temporary.unlink(missing_ok=True)
    ledger = Ledger(f"sqlite:///{temporary}")
    ledger.migrate()
    ledger.close()
    connection = sqlite3.connect(temporary, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA cache_size=-400000")
    item_sql = f"INSERT INTO items VALUES ({', '.join('?' * 22)})"
    event_sql = f"INSERT INTO events VALUES ({', '.join('?' * 8)})"
    for items, events in Generator(count).batches():
        connection.execute("BEGIN")
        connection.executemany(item_sql, items)
        connection.executemany(event_sql, events)
        connection.execute("COMMIT")
        print(f"  {items[-1][0]:>9,} revisions", file=sys.stderr, end="\r")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    temporary.rename(path)
    print(file=sys.stderr)


def cached_ledger(cache: Path, count: int) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"ledger-{count}-g{GENERATOR_VERSION}.sqlite3"
    if not path.exists():
        started = time.perf_counter()
        print(f"building {path} ...", file=sys.stderr)
        build(path, count)
        print(f"built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    ledger = Ledger(f"sqlite:///{path}")
    started = time.perf_counter()
    if ledger.migrate():  # a cached file from an older schema gets the new indexes
        print(f"migrated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    ledger.close()
    return path


def timed(action: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, max) wall milliseconds over `runs` calls after one warm-up call."""
    action()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def sample_export(config: Path, *extra: str) -> tuple[float, list[int]]:
    """Run `cutoutd ledger export` to /dev/null; (seconds, RSS samples in KiB every 0.1 s)."""
    command = [sys.executable, "-m", "daemon.cli", "--config", str(config), "ledger", "export"]
    samples: list[int] = []
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen([*command, *extra], stdout=sink)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.1):
                samples.append(rss_kib(process.pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        code = process.wait()
        done.set()
        watcher.join()
    if code != 0:
        raise SystemExit(f"export failed with exit code {code}")
    return time.perf_counter() - started, [s for s in samples if s]


def report_export(config: Path, fmt: str) -> None:
    seconds, samples = sample_export(config, "--format", fmt)
    _, baseline = sample_export(config, "--format", fmt, "--since", "2100-01-01")
    base = max(baseline) if baseline else 0
    tenth = len(samples) // 10
    print(
        f"export {fmt:5}  {seconds:7.1f} s   peak RSS {max(samples) / 1024:6.1f} MiB"
        f" (empty export {base / 1024:.1f} MiB; delta {(max(samples) - base) / 1024:+.1f} MiB);"
        f" RSS at 10%/50%/90% of the run: "
        + " / ".join(f"{samples[i] / 1024:.1f}" for i in (tenth, 5 * tenth, 9 * tenth))
        + " MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cutoutd-bench"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    path = cached_ledger(args.cache, args.count)
    url = f"sqlite:///{path}"
    audit = LedgerAudit(LedgerReader(url, writer=False))
    middle = f"batch{args.count // 2 // 5000:04d}/IMG_{args.count // 2:07d}.jpg"
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs,")
    print(f"# Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {path.name}")
    print(f"# {path.stat().st_size / 2**20:.0f} MiB, {args.count:,} revisions")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("stats (all time)", lambda: audit.stats()),
        (
            "stats --since 7d --by day",
            lambda: audit.stats(since=START + SPAN - timedelta(days=7), by="day"),
        ),
        ("stats --by month (all time)", lambda: audit.stats(by="month")),
        ("show PATH", lambda: audit.show(middle)),
        ("show ID", lambda: audit.show(str(args.count // 3))),
        ("list --limit 100", lambda: audit.list_items(ItemFilter(), limit=100)),
        (
            "list --status failed --limit 100",
            lambda: audit.list_items(ItemFilter(statuses=(ItemStatus.FAILED,)), limit=100),
        ),
        (
            "list --path 'batch0100/*' --limit 100",
            lambda: audit.list_items(ItemFilter(path_glob="batch0100/*"), limit=100),
        ),
        (
            "list --sort oldest --limit 100",
            lambda: audit.list_items(ItemFilter(), sort=Sort.OLDEST, limit=100),
        ),
    ]
    for name, action in cases:
        median, worst = timed(action, args.runs)
        print(f"{name:42} median {median:8.1f} ms   max {worst:8.1f} ms")
    median, worst = timed(lambda: audit.stats(exact=True), 2)
    print(f"{'stats --exact (all time)':42} median {median:8.1f} ms   max {worst:8.1f} ms")
    print(f"# load average after the timings: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    audit.close()
    if args.no_export:
        return
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder, "cutoutd.toml")
        config.write_text(f'[source]\nroot = "{folder}"\n[ledger]\nurl = "{url}"\n')
        for fmt in ("jsonl", "csv"):
            report_export(config, fmt)


if __name__ == "__main__":
    main()
