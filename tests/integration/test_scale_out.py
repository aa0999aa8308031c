"""Several nodes on one ledger, at the ledger's level: claims, fencing, expiry and takeover,
node names, the lister lease, the cursor's compare-and-set, shared submission slots and
output names. Each test runs on a real SQLite file and on real PostgreSQL; several nodes
are several Ledger objects (tests/e2e runs several real `cutoutd` processes).

On PostgreSQL, claims and leases run on the database's clock: a test that needs a lease
to run out gives it a short one and waits for the takeover. On SQLite the injected clock
is moved instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.engines.ratelimit import SystemClock
from daemon.engines.shared_limit import SharedSubmitLimiter
from daemon.errors import CursorMovedError, LostClaimError, NodeConflictError
from daemon.ledger import Ledger
from daemon.ledger.slots import SubmitSlots
from daemon.models import (
    ChangeBatch,
    Cutout,
    DeletedEntry,
    EngineJob,
    ItemStatus,
    RemoteFile,
    SubmittedJob,
)
from daemon.pipeline import Pipeline
from daemon.profiles import output_candidates
from daemon.storage.local import LocalStorage
from tests.helpers import ChromaKeyEngine, write_shape

SHORT_LEASE = 1.0  # seconds, PostgreSQL (its own clock); margins hold on a loaded machine


def file(path: str, rev: str = "015f1a2b3c", content_hash: str | None = None) -> RemoteFile:
    digest = content_hash or f"{abs(hash((path, rev))):064d}"[-64:]
    return RemoteFile(path=path, path_lower=path.lower(), rev=rev, size=10, content_hash=digest)


@dataclass
class Nodes:
    """Ledgers for several nodes on one database. `expire()` makes every lease granted so
    far run out: SQLite moves the shared clock; PostgreSQL leases are SHORT_LEASE long and
    `expire()` waits that long."""

    url: str
    now: list[datetime] = field(default_factory=lambda: [datetime(2026, 12, 6, tzinfo=UTC)])
    made: list[Ledger] = field(default_factory=list)

    @property
    def postgresql(self) -> bool:
        return self.url.startswith("postgresql")

    def node(self, name: str, **options: object) -> Ledger:
        lease = SHORT_LEASE if self.postgresql else 60.0
        kwargs: dict[str, object] = {"node_id": name, "lease_seconds": lease, **options}
        if not self.postgresql:
            kwargs["clock"] = lambda: self.now[0]
        ledger = Ledger(self.url, **kwargs)  # type: ignore[arg-type]
        ledger.migrate()
        self.made.append(ledger)
        return ledger

    def expire(self) -> None:
        if self.postgresql:
            time.sleep(SHORT_LEASE + 0.1)  # the database's clock: nothing to move by hand
        else:
            self.now[0] += timedelta(seconds=61)


@pytest.fixture
def nodes(ledger_url: str) -> Iterator[Nodes]:
    made = Nodes(ledger_url)
    yield made
    for ledger in made.made:
        ledger.close()


def discover(ledger: Ledger, *paths: str, cursor: str = "c1") -> None:
    ledger.record_changes("s", ChangeBatch(tuple(file(p) for p in paths), cursor), "photoshop")


def snapshot(ledger: Ledger, item_id: int) -> tuple[object, ...]:
    return (ledger.get(item_id), ledger.events(item_id), ledger.outputs_of(item_id))


# -- claims ----------------------------------------------------------------------------------


def test_a_claim_carries_a_fresh_token_and_the_claimer(nodes: Nodes) -> None:
    a = nodes.node("a")
    discover(a, "x.jpg", "y.jpg")
    first, second = a.claim_next(), a.claim_next()
    assert first is not None and second is not None
    assert None not in (first.claim_token, second.claim_token)
    assert first.claim_token != second.claim_token
    assert a.claim_next() is None
    assert [e["actor"] for e in a.events(first.id)] == ["a", "a"]


def test_never_two_claims_on_one_input(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    a.record_changes("s", ChangeBatch((file("x.jpg", "0001"), file("x.jpg", "0002")), "c"), "l")
    held = a.claim_next()
    assert held is not None and held.rev == "0001"
    assert b.claim_next() is None  # the newer revision waits for the older one to finish
    a.transition(held, ItemStatus.PROCESSING, ItemStatus.SUCCEEDED, "succeeded")
    after = b.claim_next()
    assert after is not None and after.rev == "0002"


def test_never_two_claims_on_one_content_hash_with_dedupe(nodes: Nodes) -> None:
    a = nodes.node("a", dedupe=True)
    b = nodes.node("b", dedupe=True)
    same = "d" * 64
    a.record_changes(
        "s",
        ChangeBatch((file("x.jpg", content_hash=same), file("y.jpg", content_hash=same)), "c"),
        "l",
    )
    held = a.claim_next()
    assert held is not None and held.path == "x.jpg"
    assert b.claim_next() is None
    a.transition(held, ItemStatus.PROCESSING, ItemStatus.SUCCEEDED, "succeeded")
    assert (b.claim_next() or held).path == "y.jpg"


def test_without_dedupe_equal_content_is_claimed_at_once(nodes: Nodes) -> None:
    a = nodes.node("a")
    same = "d" * 64
    a.record_changes(
        "s",
        ChangeBatch((file("x.jpg", content_hash=same), file("y.jpg", content_hash=same)), "c"),
        "l",
    )
    assert a.claim_next() is not None and a.claim_next() is not None


# -- fencing ---------------------------------------------------------------------------------


def test_a_stale_tokens_every_write_raises_and_changes_nothing(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    discover(a, "x.jpg")
    stale = a.claim_next()
    assert stale is not None
    nodes.expire()
    assert [i.id for i in b.recover_expired()] == [stale.id]
    taken = b.claim_next()
    assert taken is not None and taken.claim_token != stale.claim_token
    before = snapshot(b, stale.id)
    writes: list[Callable[[], object]] = [
        lambda: a.transition(stale, ItemStatus.PROCESSING, ItemStatus.SUCCEEDED, "succeeded"),
        lambda: a.transition(stale, ItemStatus.PROCESSING, ItemStatus.PENDING, "released"),
        lambda: a.transition(stale, ItemStatus.PROCESSING, ItemStatus.FAILED, "failed"),
        lambda: a.record_submission(stale, SubmittedJob("urn:2", "http://x/2"), False),
        lambda: a.record_event(stale, "result_received"),
        lambda: a.reserve_output(stale, 0, "spec", ["x.png"]),
        lambda: a.record_output_written(stale, 0, 10),
        lambda: a.mark_relocated(stale, "archive/x.jpg", "moved_to_archive"),
        lambda: a.clear_relocation(stale, "gone"),
    ]
    for write in writes:
        with pytest.raises(LostClaimError):
            write()
    assert snapshot(b, stale.id) == before
    # the current claim's writes go through
    b.record_submission(taken, SubmittedJob("urn:3", "http://x/3"), False)
    assert b.reserve_output(taken, 0, "spec", ["x.png"]) == "x.png"
    b.record_output_written(taken, 0, 10)
    b.transition(
        taken, ItemStatus.PROCESSING, ItemStatus.SUCCEEDED, "succeeded", {"relocate_to": "archive"}
    )


def test_the_archive_move_is_fenced_on_its_own_claim(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    discover(a, "x.jpg")
    item = a.claim_next()
    assert item is not None
    done = a.transition(
        item, ItemStatus.PROCESSING, ItemStatus.SUCCEEDED, "succeeded", {"relocate_to": "archive"}
    )
    assert done.claim_token is None and done.move_token == item.claim_token
    assert b.claim_relocations() == []  # a holds the move while its lease runs
    assert a.holds_move(item)
    nodes.expire()
    [(moved, target)] = b.claim_relocations()
    assert target == "archive" and moved.move_token not in (None, item.claim_token)
    assert not a.holds_move(item)
    with pytest.raises(LostClaimError):
        a.mark_relocated(item, "archive/x.jpg", "moved_to_archive")
    b.mark_relocated(moved, "archive/x.jpg", "moved_to_archive")
    events = b.events(item.id)
    assert [e["event"] for e in events][-2:] == ["move_recovered", "moved_to_archive"]
    assert events[-2]["detail"] == {"node": "a"}
    assert [e["actor"] for e in events if e["event"] == "moved_to_archive"] == ["b"]


def test_a_released_move_is_swept_by_the_lister(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    discover(a, "x.jpg")
    item = a.claim_next()
    assert item is not None
    a.transition(
        item, ItemStatus.PROCESSING, ItemStatus.FAILED, "failed", {"relocate_to": "failed"}
    )
    a.release_move(item)  # the move failed for now
    [(swept, target)] = b.claim_relocations()
    assert (swept.id, target) == (item.id, "failed")
    b.clear_relocation(swept, "input changed or gone; left in place")
    assert b.claim_relocations() == []


# -- expiry, takeover, heartbeats --------------------------------------------------------------


def test_an_expired_claim_is_taken_over_and_its_job_resumed(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    discover(a, "x.jpg")
    item = a.claim_next()
    assert item is not None
    a.record_submission(item, SubmittedJob("urn:ff:jobs:1", "http://x/status/1"), False)
    assert b.recover_expired() == []  # a's lease runs
    nodes.expire()  # a dies: no more heartbeats
    [recovered] = b.recover_expired()
    assert recovered.id == item.id
    event = b.events(item.id)[-1]
    assert (event["event"], event["actor"], event["detail"]) == (
        "recovered",
        "b",
        {"node": "a", "reason": "lease expired"},
    )
    taken = b.claim_next()
    assert taken is not None
    assert (taken.job_id, taken.status_url, taken.attempts) == (
        "urn:ff:jobs:1",
        "http://x/status/1",
        2,
    )


def test_heartbeats_keep_a_nodes_claims(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    a.register_node()
    b.register_node()
    discover(a, "x.jpg")
    assert a.claim_next() is not None
    for _ in range(3):  # three leases long, beating all the while
        if nodes.postgresql:
            time.sleep(SHORT_LEASE / 2)
        else:
            nodes.now[0] += timedelta(seconds=30)
        a.heartbeat()
        assert b.recover_expired() == []
    [report] = [r for r in b.node_reports() if r.name == "a"]
    assert (report.alive, report.claims) == (True, 1)
    nodes.expire()
    assert len(b.recover_expired()) == 1


def test_a_live_node_name_is_refused(nodes: Nodes) -> None:
    first = nodes.node("shop-1")
    first.register_node()
    second = nodes.node("shop-1")
    if not nodes.postgresql:  # one machine's file: the name is simply taken over
        second.register_node()
        with pytest.raises(NodeConflictError):
            first.heartbeat()
        return
    with pytest.raises(NodeConflictError, match=r"another live node is named 'shop-1'.*node_id"):
        second.register_node()
    first.deregister_node()  # a clean stop frees the name at once
    second.register_node()
    second.heartbeat()


def test_a_crashed_run_on_this_machine_frees_its_name_at_once(nodes: Nodes) -> None:
    """A node killed (no deregistering) and restarted by systemd with the same name: the
    earlier run's pid is gone from this machine, so the name is not held for its lease."""
    crash = (
        "import os, sys; from daemon.ledger import Ledger; "
        "ledger = Ledger(sys.argv[1], node_id='shop-1', lease_seconds=600); "
        "ledger.register_node(); os._exit(0)"
    )
    nodes.node("observer")  # the schema
    subprocess.run([sys.executable, "-c", crash, nodes.url], check=True, timeout=60)
    restarted = nodes.node("shop-1", lease_seconds=60.0)  # alive while the test looks
    restarted.register_node()
    restarted.heartbeat()
    [report] = restarted.node_reports()
    assert (report.name, report.pid, report.alive) == ("shop-1", os.getpid(), True)


def test_a_dead_nodes_name_is_free_after_its_lease(nodes: Nodes) -> None:
    first = nodes.node("shop-1")
    first.register_node()
    nodes.expire()
    second = nodes.node("shop-1")
    second.register_node()
    with pytest.raises(NodeConflictError):
        first.heartbeat()  # stopped past its lease, it finds its name taken


def test_a_restarted_node_takes_back_its_own_claims_at_once(nodes: Nodes) -> None:
    a = nodes.node("a")
    discover(a, "x.jpg")
    assert a.claim_next() is not None
    again = nodes.node("a")  # the same node_id after a crash (no expiry needed)
    again.register_node()
    assert len(again.recover_at_start()) == 1


# -- the lister lease -------------------------------------------------------------------------


def test_one_lister_at_a_time_and_takeover_on_expiry(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    assert a.hold_lease() is True
    assert b.hold_lease() is False
    assert a.hold_lease() is True  # renewed
    assert b.lease_holder() == "a"
    nodes.expire()
    assert b.lease_holder() is None
    assert b.hold_lease() is True
    assert a.hold_lease() is False
    b.release_lease()
    assert a.hold_lease() is True


def test_the_heartbeat_renews_the_lister_lease(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    a.register_node()
    assert a.hold_lease()
    for _ in range(3):
        if nodes.postgresql:
            time.sleep(SHORT_LEASE / 2)
        else:
            nodes.now[0] += timedelta(seconds=30)
        a.heartbeat()
        assert b.hold_lease() is False
    assert [r.lister for r in b.node_reports()] == [True]


# -- the cursor ------------------------------------------------------------------------------


def test_two_nodes_storing_the_first_cursor_one_wins_and_the_other_rolls_back(
    nodes: Nodes,
) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    a.record_changes("s", ChangeBatch((file("x.jpg"),), "a1"), "l", since=None)
    with pytest.raises(CursorMovedError):
        b.record_changes("s", ChangeBatch((file("y.jpg"),), "b1"), "l", since=None)
    assert a.get_cursor("s") == "a1"
    assert [i.path for i in a.list_items()] == ["x.jpg"]


def test_a_stale_page_rolls_back_and_its_delete_skips_nothing(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    a.record_changes("s", ChangeBatch((file("x.jpg", "0001"),), "c1"), "l", since=None)
    # b lists from c1 and sees x.jpg deleted and uploaded again, as 0002
    b.record_changes(
        "s",
        ChangeBatch((DeletedEntry("x.jpg"), file("x.jpg", "0002")), "c2"),
        "l",
        since="c1",
    )
    # a, behind, replays a page from c1 that holds only the delete
    with pytest.raises(CursorMovedError):
        a.record_changes("s", ChangeBatch((DeletedEntry("x.jpg"), file("z.jpg")), "c2'"), "l",
                         since="c1")  # fmt: skip
    assert a.get_cursor("s") == "c2"
    rows = {(i.rev, i.status) for i in a.list_items()}
    assert rows == {("0001", ItemStatus.SKIPPED), ("0002", ItemStatus.PENDING)}


def test_concurrent_first_migrations_both_succeed(ledger_url: str) -> None:
    errors: list[BaseException] = []
    ledgers = [Ledger(ledger_url, node_id=f"m{n}") for n in range(3)]
    start = threading.Barrier(len(ledgers))

    def migrate(ledger: Ledger) -> None:
        start.wait()
        try:
            ledger.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert all(ledger.check_schema() is None for ledger in ledgers)
    finally:
        for ledger in ledgers:
            ledger.close()


# -- Adobe's submission slots -------------------------------------------------------------


def test_shared_submit_slots_never_exceed_the_limit(nodes: Nodes) -> None:
    """Two nodes, four threads each, limit 2 per 0.6 s: no window of 0.6 s holds more than
    two request starts (the rule: a slot counts until `period` after its request ended)."""
    limit, period = 2, 0.6
    starts: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(ledger: Ledger) -> None:
        limiter = SharedSubmitLimiter(
            SubmitSlots(ledger, "photoshop", limit, period, timeout=10.0), SystemClock()
        )
        for _ in range(2):
            with limiter.slot(stop):
                with lock:
                    starts.append(time.time())
                time.sleep(0.02)  # the request

    node_ledgers = [nodes.node("a"), nodes.node("b")]
    if not nodes.postgresql:  # the slots need a running clock
        for ledger in node_ledgers:
            ledger.clock = lambda: datetime.now(UTC)
    threads = [
        threading.Thread(target=submitter, args=(ledger,))
        for ledger in node_ledgers
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    starts.sort()
    assert len(starts) == 16
    for n, start in enumerate(starts):
        in_window = [s for s in starts[n:] if s < start + period]
        assert len(in_window) <= limit, (n, in_window)
    # and the limit is used: 16 submissions take about 8 periods, not much more
    assert starts[-1] - starts[0] < 8 * (period + 0.3)


def test_retry_after_pauses_every_node(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    for ledger in (a, b):
        ledger.clock = lambda: datetime.now(UTC)
    slots_a = SubmitSlots(a, "photoshop", 2, 3.0, timeout=10.0)
    slots_b = SubmitSlots(b, "photoshop", 2, 3.0, timeout=10.0)
    slots_a.pause(30.0)
    granted, wait = slots_b.try_acquire()
    assert granted is None and 29.0 < wait <= 30.0
    slots_b.pause(1.0)  # a shorter pause never shortens a longer one
    assert 28.0 < slots_a.try_acquire()[1] <= 30.0


def test_a_dead_nodes_slot_is_free_within_the_request_timeout(nodes: Nodes) -> None:
    a, b = nodes.node("a"), nodes.node("b")
    if not nodes.postgresql:
        for ledger in (a, b):
            ledger.clock = lambda: nodes.now[0]
    timeout = 0.5 if nodes.postgresql else 60.0
    dead = SubmitSlots(a, "photoshop", 1, 0.1, timeout=timeout)
    live = SubmitSlots(b, "photoshop", 1, 0.1, timeout=timeout)
    granted, _ = dead.try_acquire()
    assert granted is not None  # ... and node a dies before its request finishes
    assert live.try_acquire()[0] is None
    if nodes.postgresql:
        time.sleep(timeout + 0.1)
    else:
        nodes.expire()
    assert live.try_acquire()[0] is not None


# -- output names ----------------------------------------------------------------------------


def test_concurrent_reservers_never_share_an_output_name(nodes: Nodes) -> None:
    """100 pairs x.jpg + x.png, reserved by 8 threads on 2 nodes at once: every input gets
    its own name, and a pair's second input gets `x.<ext>.png`."""
    a = nodes.node("a")
    paths = [f"shots/p{n:03d}.{ext}" for n in range(100) for ext in ("jpg", "png")]
    a.record_changes("s", ChangeBatch(tuple(file(p) for p in paths), "c"), "l")
    items = {i.path: i for i in a.list_items()}
    ledgers = [nodes.node("a2"), nodes.node("b")]
    names: dict[str, str] = {}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def reserver(ledger: Ledger, share: list[str]) -> None:
        start.wait()
        for path in share:
            item = items[path]
            name = ledger.reserve_output(item, 0, "spec", output_candidates(path, "png"))
            with lock:
                names[path] = name

    # each pair split across threads of both nodes, in opposite orders
    shares = [paths[n::4] for n in range(4)]
    threads = [
        threading.Thread(target=reserver, args=(ledger, share if k == 0 else share[::-1]))
        for k, ledger in enumerate(ledgers)
        for share in shares
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(names) == 200
    assert len(set(names.values())) == 200
    for n in range(100):
        pair = {names[f"shots/p{n:03d}.jpg"], names[f"shots/p{n:03d}.png"]}
        assert len(pair & {f"shots/p{n:03d}.png"}) == 1
        assert pair - {f"shots/p{n:03d}.png"} <= {
            f"shots/p{n:03d}.jpg.png",
            f"shots/p{n:03d}.png.png",
        }


def test_a_rerun_keeps_its_names_and_case_folding_counts(nodes: Nodes) -> None:
    a = nodes.node("a")
    discover(a, "Shoe.jpg", "shoe.PNG")
    first, second = a.list_items(newest_first=False)
    assert a.reserve_output(first, 0, "s", ["Shoe.png"]) == "Shoe.png"
    assert a.reserve_output(first, 0, "s", ["Shoe.png"]) == "Shoe.png"
    with pytest.raises(Exception, match="every output name is taken"):
        a.reserve_output(second, 0, "s", ["shoe.png"])
    assert a.reserve_output(second, 0, "s", ["shoe.png", "shoe.PNG.png"]) == ("shoe.PNG.png")


def test_the_photoshop_engine_shares_its_limit_only_on_postgresql(nodes: Nodes) -> None:
    from daemon.compose import shared_submit_limiter
    from daemon.config import parse_settings

    settings = parse_settings({"ledger": {"url": nodes.url}})
    make = shared_submit_limiter(settings, nodes.node("a"))
    if not nodes.postgresql:
        assert make is None  # one machine: the in-memory limiter
        return
    assert make is not None
    assert isinstance(make(SystemClock()), SharedSubmitLimiter)


# -- the pipeline on a claim taken over -------------------------------------------------------


class HeldEngine(ChromaKeyEngine):
    """Cuts out only when released: the node is stopped in the middle of an image."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def cut_out(self, job: EngineJob) -> Cutout:
        self.entered.set()
        assert self.release.wait(60)
        return super().cut_out(job)


def test_a_node_whose_claim_was_taken_leaves_no_trace(
    nodes: Nodes, make_settings: Callable[..., Settings], root: Path
) -> None:
    """Node a is held in its engine past its lease; b takes the image over. When a goes
    on it writes no output, moves no input and records nothing; b's run is the one."""
    write_shape(root / "input" / "a.jpg")
    settings = make_settings(ledger={"url": nodes.url})
    storage = LocalStorage(settings.source.root, settle_seconds=0)
    storage.ensure_layout()
    a, b = nodes.node("a"), nodes.node("b")
    held = HeldEngine()
    stop = threading.Event()
    first = Pipeline(storage, held, a, settings, stop)
    first.discover()
    item = a.claim_next()
    assert item is not None
    worker = threading.Thread(target=first.process, args=(item,))
    worker.start()
    assert held.entered.wait(30)
    nodes.expire()
    assert [i.id for i in b.recover_expired()] == [item.id]
    taken = b.claim_next()
    assert taken is not None
    held.release.set()  # a goes on, unaware
    worker.join(60)
    assert list((root / "output").iterdir()) == []
    assert (root / "input" / "a.jpg").exists()
    events = b.events(item.id)
    recovered = [e["event"] for e in events].index("recovered")
    assert {e["actor"] for e in events[recovered:]} == {"b"}
    Pipeline(storage, ChromaKeyEngine(), b, settings, stop).process(taken)
    assert [p.name for p in (root / "output").iterdir()] == ["a.png"]
    assert [p.name for p in (root / "archive").iterdir()] == ["a.jpg"]
    done = b.get(item.id)
    assert done is not None and done.status == ItemStatus.SUCCEEDED
