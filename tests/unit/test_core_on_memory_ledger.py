"""The core (pipeline, worker pool, change watcher) over the in-memory ledger: no database,
a real folder, the fast chroma-key engine. tests/integration/test_ledger_contract.py keeps
the memory ledger honest against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import TransientError
from daemon.models import ItemStatus
from daemon.pipeline import Pipeline
from daemon.storage.local import LocalStorage
from daemon.watcher import ChangeWatcher
from daemon.workers import WorkerPool
from tests.fakes.memory_ledger import MemoryLedger
from tests.helpers import ChromaKeyEngine, alpha_iou, write_shape


@dataclass
class Core:
    ledger: MemoryLedger
    engine: ChromaKeyEngine
    watcher: ChangeWatcher
    workers: WorkerPool
    stop: threading.Event
    fatal: list[BaseException]

    def run_until_idle(self) -> None:
        """One discovery pass, then the workers until nothing is due now."""
        self.watcher.discover()
        self.workers.start()
        self.workers.wait_until_idle()


@pytest.fixture
def core(make_settings: Callable[..., Settings], root: Path) -> Iterator[Core]:
    settings = make_settings(retry={"backoff_initial": 3600})
    storage = LocalStorage(root, settle_seconds=0)
    storage.ensure_layout()
    ledger, engine = MemoryLedger(), ChromaKeyEngine()
    stop, wake = threading.Event(), threading.Event()
    fatal: list[BaseException] = []
    pipeline = Pipeline(storage, engine, ledger, settings, stop)
    watcher = ChangeWatcher(
        pipeline, ledger, storage, stop=stop, wake=wake, on_fatal=fatal.append,
        progress=lambda: None, after_pass=lambda: None,
    )  # fmt: skip
    workers = WorkerPool(
        ledger, pipeline, count=2, poll_interval=0.2, stop=stop, wake=wake, on_fatal=fatal.append
    )
    yield Core(ledger, engine, watcher, workers, stop, fatal)
    stop.set()
    workers.drain(timeout=5.0)


def test_revisions_are_cut_out_recorded_and_archived(core: Core, root: Path) -> None:
    masks = {name: write_shape(root / "input" / name) for name in ("a.jpg", "b.jpg")}
    core.run_until_idle()
    assert core.ledger.counts()[ItemStatus.SUCCEEDED] == 2
    for name, mask in masks.items():
        stem = name.removesuffix(".jpg")
        assert alpha_iou((root / "output" / f"{stem}.png").read_bytes(), mask) > 0.9
        assert (root / "archive" / name).exists() and not (root / "input" / name).exists()
    assert core.ledger.pending_relocations() == [] and core.fatal == []


def test_a_transient_error_is_retried_later_as_data(core: Core, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    core.engine.fail_with.append(TransientError("HTTP 503"))
    core.run_until_idle()
    [item] = core.ledger.items.values()
    assert (item.status, item.attempts, item.last_error) == (ItemStatus.PENDING, 1, "HTTP 503")
    assert item.next_attempt_at is not None and item.next_attempt_at > core.ledger.clock()
    assert (root / "input" / "a.jpg").exists()  # not moved: it is not finished
