"""The pipeline over a real folder and a real SQLite ledger, with a fast chroma-key engine."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import RateLimitedError, TransientError, UnreachableError
from daemon.models import ItemStatus
from daemon.profiles import output_candidates
from daemon.service import Service
from tests.helpers import ChromaKeyEngine, alpha_iou, write_shape

MakeService = Callable[..., Service]


def statuses(service: Service) -> dict[str, str]:
    return {i.path: i.status.value for i in service.ledger.list_items()}


def test_processes_archives_and_records(make_service: MakeService, root: Path) -> None:
    mask = write_shape(root / "input" / "mug.jpg")
    service = make_service()
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    assert alpha_iou((root / "output" / "mug.png").read_bytes(), mask) > 0.9
    assert not (root / "input" / "mug.jpg").exists()
    assert (root / "archive" / "mug.jpg").exists()
    [item] = service.ledger.list_items()
    assert (item.status, item.output_path, item.archived_path) == (
        ItemStatus.SUCCEEDED,
        "mug.png",
        "archive/mug.jpg",
    )
    assert item.finished_at and item.archived_at and item.started_at


def test_second_run_does_nothing(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    engine = ChromaKeyEngine()
    make_service(engine).run_once()
    summary = make_service(engine).run_once()
    assert engine.calls == 1
    assert sum(summary.counts.values()) == 0


def test_same_stem_different_extensions_keep_both_outputs(
    make_service: MakeService, root: Path
) -> None:
    write_shape(root / "input" / "a.jpg", color=(200, 0, 0))
    write_shape(root / "input" / "a.png", color=(0, 0, 200))
    service = make_service()
    service.run_once()
    outputs = sorted(p.name for p in (root / "output").iterdir())
    assert outputs == ["a.jpg.png", "a.png"] or outputs == ["a.png", "a.png.png"]
    assert len({i.output_path for i in service.ledger.list_items()}) == 2


def test_output_candidates_rule() -> None:
    assert output_candidates("x/a.jpg", "png") == ["x/a.png", "x/a.jpg.png"]
    assert output_candidates("a.png", "webp") == ["a.webp", "a.png.webp"]


def test_changed_file_is_processed_again(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    engine = ChromaKeyEngine()
    make_service(engine, archive={"policy": "keep"}).run_once()
    write_shape(root / "input" / "a.jpg", color=(0, 120, 0))
    os.utime(root / "input" / "a.jpg", ns=(1, 10**18))
    make_service(engine, archive={"policy": "keep"}).run_once()
    assert engine.calls == 2
    items = make_service(engine).ledger.list_items()
    assert [i.status for i in items] == [ItemStatus.SUCCEEDED, ItemStatus.SUCCEEDED]
    assert items[0].rev != items[1].rev


def test_duplicate_content_is_skipped_and_output_reused(
    make_service: MakeService, root: Path
) -> None:
    write_shape(root / "input" / "one.jpg")
    (root / "input" / "two.jpg").write_bytes((root / "input" / "one.jpg").read_bytes())
    engine = ChromaKeyEngine()
    service = make_service(engine, engine={"workers": 1})
    service.run_once()
    assert engine.calls == 1
    by_path = {i.path: i for i in service.ledger.list_items()}
    assert by_path["one.jpg"].status == ItemStatus.SUCCEEDED
    assert by_path["two.jpg"].status == ItemStatus.SKIPPED
    assert "duplicate of one.jpg" in (by_path["two.jpg"].last_error or "")
    assert (root / "output" / "two.png").read_bytes() == (root / "output" / "one.png").read_bytes()
    assert (root / "archive" / "two.jpg").exists()


def test_dedupe_off_processes_duplicates(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "one.jpg")
    (root / "input" / "two.jpg").write_bytes((root / "input" / "one.jpg").read_bytes())
    engine = ChromaKeyEngine()
    make_service(engine, source={"dedupe": "off"}).run_once()
    assert engine.calls == 2


def test_bad_inputs_fail_without_hurting_good_ones(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "good.jpg")
    (root / "input" / "empty.jpg").write_bytes(b"")
    (root / "input" / "text.png").write_text("not an image")
    service = make_service()
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1, ItemStatus.FAILED: 2}
    by_path = {i.path: i for i in service.ledger.list_items()}
    assert by_path["good.jpg"].status == ItemStatus.SUCCEEDED
    for name in ("empty.jpg", "text.png"):
        assert by_path[name].status == ItemStatus.FAILED
        assert by_path[name].last_error
        assert (root / "failed" / name).exists()
        assert by_path[name].archived_path == f"failed/{name}"


def test_transient_errors_retry_then_succeed(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    engine = ChromaKeyEngine()
    engine.fail_with = [TransientError("network down"), TransientError("still down")]
    service = make_service(engine)
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    [item] = service.ledger.list_items()
    assert item.attempts == 3


def test_transient_errors_give_up_after_max_attempts(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    engine = ChromaKeyEngine()
    engine.fail_with = [TransientError("down")] * 5
    service = make_service(engine)
    service.run_once()
    [item] = service.ledger.list_items()
    assert item.status == ItemStatus.FAILED
    assert "gave up after 3 attempts: down" in (item.last_error or "")
    assert (root / "failed" / "a.jpg").exists()


def test_hidden_and_temporary_files_are_ignored(make_service: MakeService, root: Path) -> None:
    for name in (".hidden.jpg", "~$lock.jpg", "big.jpg.part", "d.jpg.crdownload"):
        write_shape(root / "input" / name)
    service = make_service()
    service.run_once()
    assert service.ledger.list_items() == []


def test_recursive_mirrors_subfolders(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a" / "b" / "x.jpg")
    write_shape(root / "input" / "top.jpg")
    make_service(source={"recursive": True}).run_once()
    assert (root / "output" / "a" / "b" / "x.png").exists()
    assert (root / "archive" / "a" / "b" / "x.jpg").exists()
    assert (root / "output" / "top.png").exists()


def test_non_recursive_ignores_subfolders(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "sub" / "x.jpg")
    (root / "input" / "folder.jpg").mkdir(parents=True)
    service = make_service()
    service.run_once()
    assert service.ledger.list_items() == []
    assert (root / "input" / "sub" / "x.jpg").exists()


def test_archive_conflict_gets_unique_name(make_service: MakeService, root: Path) -> None:
    (root / "archive").mkdir(parents=True)
    (root / "archive" / "a.jpg").write_bytes(b"older")
    write_shape(root / "input" / "a.jpg")
    make_service().run_once()
    assert (root / "archive" / "a.jpg").read_bytes() == b"older"
    assert (root / "archive" / "a (1).jpg").exists()


def test_archive_policies(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    make_service(archive={"policy": "delete"}).run_once()
    assert not (root / "input" / "a.jpg").exists()
    assert not (root / "archive" / "a.jpg").exists()
    assert (root / "output" / "a.png").exists()


def test_deleted_before_processing_is_skipped(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    service = make_service()
    service.start()
    service.watcher.discover()
    (root / "input" / "a.jpg").unlink()
    service.workers.work_until_idle()
    [item] = service.ledger.list_items()
    assert item.status == ItemStatus.SKIPPED
    assert item.last_error == "deleted before processing"


def test_crash_recovery_resets_processing(make_service: MakeService, root: Path) -> None:
    write_shape(root / "input" / "a.jpg")
    service = make_service()
    service.start()
    service.watcher.discover()
    claimed = service.ledger.claim_next()
    assert claimed is not None
    # the process dies here; a new one starts on the same ledger
    again = make_service()
    summary = again.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    names = [e["event"] for e in again.ledger.events(claimed.id)]
    assert names[:3] == ["discovered", "claimed", "recovered"]
    assert names[-2:] == ["succeeded", "moved_to_archive"]


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        # held at max_attempts - 1 while unreachable, then one more
        (UnreachableError("cannot reach Dropbox (ConnectionError)"), 3),
        # given back each time: the attempt is never spent
        (RateLimitedError("429", 0.01), 1),
    ],
    ids=["unreachable", "rate_limited"],
)
def test_service_wide_trouble_never_uses_up_the_last_attempt(
    make_service: MakeService, root: Path, error: TransientError, attempts: int
) -> None:
    write_shape(root / "input" / "a.jpg")
    engine = ChromaKeyEngine()
    engine.fail_with = [error] * 6
    service = make_service(engine)
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    [item] = service.ledger.list_items()
    assert item.attempts == attempts


def test_ledger_failure_at_the_outcome_puts_the_item_back(
    make_service: MakeService, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills between the cutout and its recording: the claimed revision must not
    stay `processing` (and its worker must not die) until a restart."""
    write_shape(root / "input" / "a.jpg")
    service = make_service()
    real = service.ledger.transition
    failing = {"succeeded": 1, "retry_scheduled": 1}

    def transition(item_id: int, expected: Any, target: Any, event: str, *args: Any,
                   **kwargs: Any) -> Any:  # fmt: skip
        if failing.get(event):
            failing[event] -= 1
            raise TransientError("ledger unavailable: database or disk is full")
        return real(item_id, expected, target, event, *args, **kwargs)

    monkeypatch.setattr(service.ledger, "transition", transition)
    summary = service.run_once()
    assert summary.counts == {ItemStatus.SUCCEEDED: 1}
    [item] = service.ledger.list_items()
    names = [e["event"] for e in service.ledger.events(item.id)]
    assert names.count("claimed") == 2 and "released" in names
    assert (root / "archive" / "a.jpg").exists()


def test_a_failing_claim_does_not_end_the_worker(
    make_service: MakeService, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    service.start()

    def claim_next() -> None:
        raise TransientError("ledger unavailable: database is locked")

    monkeypatch.setattr(service.ledger, "claim_next", claim_next)
    service.workers.work_until_idle()  # returns; the worker loop tries again later


TWO_OUTPUTS: dict[str, Any] = {
    "name": "shop",
    "match": ["shop*"],
    "output": [
        {"format": "jpeg", "canvas": "300x300"},
        {"format": "webp", "trim": True, "padding": 4, "folder": "web"},
    ],
}


def test_profile_outputs_are_written_and_recorded_per_input(
    make_service: MakeService, root: Path
) -> None:
    write_shape(root / "input" / "shop-a.jpg")
    write_shape(root / "input" / "plain.jpg", color=(20, 200, 40))
    engine = ChromaKeyEngine()
    service = make_service(engine, profile=[TWO_OUTPUTS])
    service.run_once()
    assert engine.calls == 2  # once per input, whatever the number of outputs
    assert sorted(p.relative_to(root / "output").as_posix() for p in (root / "output").rglob("*.*")) == [
        "plain.png", "shop-a.jpg", "web/shop-a.webp",
    ]  # fmt: skip
    items = {i.path: i for i in service.ledger.list_items()}
    recorded = service.ledger.outputs_of(items["shop-a.jpg"].id)
    assert [(o.slot, o.path) for o in recorded] == [(0, "shop-a.jpg"), (1, "web/shop-a.webp")]
    assert all(o.bytes and o.written_at for o in recorded)
    assert items["shop-a.jpg"].output_path == "shop-a.jpg"


def test_duplicates_reuse_outputs_only_from_the_same_recipe(
    make_service: MakeService, root: Path
) -> None:
    write_shape(root / "input" / "shop-a.jpg")
    data = (root / "input" / "shop-a.jpg").read_bytes()
    (root / "input" / "shop-b.jpg").write_bytes(data)  # same recipe: outputs copied
    (root / "input" / "other.jpg").write_bytes(data)  # the default recipe: made afresh
    engine = ChromaKeyEngine()
    service = make_service(engine, profile=[TWO_OUTPUTS], engine={"workers": 1})
    service.run_once()
    assert engine.calls == 2
    by_path = {i.path: i for i in service.ledger.list_items()}
    assert by_path["shop-b.jpg"].status == ItemStatus.SKIPPED
    assert by_path["other.jpg"].status == ItemStatus.SUCCEEDED
    out = root / "output"
    assert (out / "shop-b.jpg").read_bytes() == (out / "shop-a.jpg").read_bytes()
    assert (out / "web" / "shop-b.webp").read_bytes() == (out / "web" / "shop-a.webp").read_bytes()
    assert len(service.ledger.outputs_of(by_path["shop-b.jpg"].id)) == 2
    assert (out / "other.png").exists()


def test_a_failure_between_outputs_leaves_the_input_for_a_clean_retry(
    make_service: MakeService, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_shape(root / "input" / "shop-a.jpg")
    engine = ChromaKeyEngine()
    service = make_service(engine, profile=[TWO_OUTPUTS])
    storage = service.storage
    real_write = storage.write
    failures = [TransientError("disk hiccup")]

    def write_failing_once(area: Any, path: str, data: bytes) -> None:
        if path.startswith("web/") and failures:
            raise failures.pop()
        real_write(area, path, data)

    monkeypatch.setattr(storage, "write", write_failing_once)
    service.run_once()
    (item,) = service.ledger.list_items()
    assert item.status == ItemStatus.SUCCEEDED and item.attempts == 2
    assert (root / "archive" / "shop-a.jpg").exists()
    assert [o.path for o in service.ledger.outputs_of(item.id)] == ["shop-a.jpg", "web/shop-a.webp"]
