"""Scale-out suite (issue 12 item 8): several real `cutoutd run` processes on one fresh
PostgreSQL database, against one fake Dropbox (the real SDK over HTTPS) and one fake
Photoshop. Nodes are killed (SIGKILL), frozen past their lease (SIGSTOP) and thawed
(SIGCONT); the ledger, the fakes' request logs and output/ say what each node did.

Time is scaled down as in the rest of tests/reliability: a 4 s lease (`LEASE`), Adobe's
2-per-3 s limit as 2 per `PERIOD` (0.3 s), poll intervals of 0.5 s.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakePhotoshop
from tests.helpers import alpha_iou, encode, shape_image
from tests.reliability.cluster import Cluster, CursorWatch, fresh_database, sliding_window_max
from tests.reliability.harness import (
    ROOT,
    SMALL,
    Figures,
    Sections,
    Shot,
    check_dropbox_state,
    is_png,
    put_shots,
    report,
    shots,
    start_adobe,
)

LEASE = 4.0
MARGIN = 10.0  # start-up of the taker's pass, resumed polls, uploads and moves, under load
SLOW_JOBS = (1.0, 2.0)  # Adobe job latency that keeps jobs in flight when a node dies


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def make_cluster(
    tmp_path: Path, database: str, dropbox: FakeDropbox
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(adobe: FakePhotoshop | None = None, extra: Sections | None = None) -> Cluster:
        cluster = Cluster(tmp_path, database, dropbox, adobe, extra, lease_seconds=LEASE)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def slow_adobe(dropbox: FakeDropbox) -> Iterator[FakePhotoshop]:
    fake = start_adobe(dropbox, latency=SLOW_JOBS)
    try:
        yield fake
    finally:
        fake.stop()


def _submissions(adobe: FakePhotoshop, names: set[str]) -> dict[str, int]:
    per_name = adobe.submissions_by_name()
    return {name: per_name[name] for name in sorted(names)}


# -- a node dies ----------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_one_of_three_nodes_mid_run(
    make_cluster: Callable[..., Cluster], dropbox: FakeDropbox, slow_adobe: FakePhotoshop
) -> None:
    """SIGKILL one of three nodes while it holds submitted Adobe jobs, and never restart it:
    the other two take its images over within the lease, resume its jobs from the stored
    job ids (no second submission) and finish every image with one output each."""
    batch = shots(30, prefix="kill", seed=31)
    put_shots(dropbox, batch)
    cluster = make_cluster(slow_adobe, {"photoshop": {"max_in_flight": 4}})
    victim, *_others = cluster.start(3)
    cluster.wait(
        lambda: len(cluster.ledger.claimed_by(victim.name, with_job=True)) >= 2,
        60,
        f"{victim.name} holding submitted Adobe jobs",
    )
    victim.kill()
    killed_at = time.monotonic()
    held = cluster.ledger.claimed_by(victim.name)
    with_job = {row["path"] for row in held if row["job_id"]}
    mark = cluster.ledger.last_event_id()

    took = cluster.wait_finished({s.name for s in batch}, LEASE + MARGIN + 30)
    figures = Figures("scale_out_kill", len(batch), kills=1, kills_while_running=1)
    problems = check_dropbox_state(dropbox, cluster.ledger.rows(), batch, figures)
    resubmitted = {n: c for n, c in _submissions(slow_adobe, with_job).items() if c != 1}
    per_name = slow_adobe.submissions_by_name()
    figures.engine_submissions = sum(per_name.values())
    figures.duplicate_submissions = sum(n - 1 for n in per_name.values() if n > 1)
    taken_over = [
        event
        for event in cluster.ledger.events(mark)
        if event["item_id"] in {row["id"] for row in held}
        and event["actor"] != victim.name
        and victim.name in (event["detail"] or "")
    ]
    figures.seconds = round(time.monotonic() - killed_at, 1)
    figures.extra.update(
        held_by_victim=len(held),
        held_with_job_id=len(with_job),
        finished_after_kill_s=round(took, 1),
        rate_limited_by_adobe=slow_adobe.rate_limited,
    )
    report(figures)

    assert not problems, problems
    assert took <= LEASE + MARGIN, f"{took:.1f} s after the kill (lease {LEASE} s)"
    assert with_job and resubmitted == {}, f"resubmitted after the kill: {resubmitted}"
    assert {e["item_id"] for e in taken_over} == {row["id"] for row in held}, (
        "every claim of the dead node comes back with an event naming it"
    )


@pytest.mark.slow
def test_a_node_frozen_past_its_lease_writes_nothing_for_what_was_taken(
    make_cluster: Callable[..., Cluster], dropbox: FakeDropbox, slow_adobe: FakePhotoshop
) -> None:
    """SIGSTOP a node that holds submitted jobs until the others have finished its images,
    then SIGCONT it: it polls its old jobs again, but writes no event (no transition, no
    job id, no archive move), no output and no Dropbox change for them."""
    batch = shots(16, prefix="frozen", seed=32)
    put_shots(dropbox, batch)
    cluster = make_cluster(slow_adobe, {"photoshop": {"max_in_flight": 4}})
    victim, *_others = cluster.start(3)
    cluster.wait(
        lambda: len(cluster.ledger.claimed_by(victim.name, with_job=True)) >= 1,
        60,
        f"{victim.name} holding submitted Adobe jobs",
    )
    victim.freeze()
    frozen_mark = cluster.ledger.last_event_id()
    taken = cluster.ledger.claimed_by(victim.name)
    taken_ids = {row["id"] for row in taken}
    jobs = {row["job_id"] for row in taken if row["job_id"]}

    cluster.wait_finished({s.name for s in batch}, LEASE + MARGIN + 30)
    polls = {job: slow_adobe.polls_of(job) for job in jobs}
    dropbox_mark = len(dropbox.requests)
    victim.thaw()
    # It wakes up inside its old waits: each of its jobs is polled again (by it: the others
    # are done with them), which is when it would write an output and archive the input.
    cluster.wait(
        lambda: any(slow_adobe.polls_of(job) > polls[job] for job in jobs),
        30,
        f"{victim.name} polling its old jobs after SIGCONT",
    )
    assert victim.daemon.stop(60) == 0, victim.log()[-4000:]

    stale_events = [
        (e["event"], e["item_id"])
        for e in cluster.events_by(victim, frozen_mark)
        if e["item_id"] in taken_ids
    ]
    writes = cluster.dropbox_writes_by(victim, dropbox_mark)
    figures = Figures("scale_out_sigstop", len(batch), kills=0)
    problems = check_dropbox_state(dropbox, cluster.ledger.rows(), batch, figures)
    resubmitted = {
        n: c
        for n, c in _submissions(slow_adobe, {r["path"] for r in taken if r["job_id"]}).items()
        if c != 1
    }
    figures.extra.update(
        taken_from_frozen_node=len(taken),
        events_by_frozen_node_for_taken=len(stale_events),
        dropbox_writes_after_sigcont=len(writes),
    )
    report(figures)

    assert taken, "the frozen node held claims"
    assert stale_events == [], stale_events
    assert writes == [], writes
    assert not problems, problems
    assert resubmitted == {}, resubmitted


# -- discovery ------------------------------------------------------------------------------

UPLOADS = 1000
WAVES = 10
POLL = 0.5
WINDOW = 20  # poll intervals observed at least


def _tiny(n: int, version: int = 0) -> bytes:
    """Bytes that stand for an image: discovery never opens them (no worker gets that far)."""
    return f"image {n} version {version}\n".encode() * 4


def _revision_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["path"].lower(), row["rev"]


@pytest.mark.slow
def test_three_nodes_discover_uploads_deletes_and_reuploads_together(
    make_cluster: Callable[..., Cluster], dropbox: FakeDropbox, adobe: FakePhotoshop
) -> None:
    """1,000 uploads arrive in waves while three nodes run, with deletes and re-uploads
    (new revisions of deleted paths) in between. Workers are held up (every Adobe call
    hangs) so only discovery runs. One node lists: about one `list_folder/continue` per
    poll interval in total; the stored cursor never moves back; every (path, rev) has one
    row; the current revision of each file is never skipped."""
    extra = {
        "source": {"poll_interval": POLL, "longpoll": False},
        "photoshop": {"max_in_flight": 1, "request_timeout": 600, "job_timeout": 600},
    }
    dropbox.make_folder(f"{ROOT}/input")
    cluster = make_cluster(adobe, extra)
    cluster.start(3)
    adobe.slow_seconds = 600.0  # every Adobe call from now on hangs: no engine work

    per_wave = UPLOADS // WAVES
    deleted: list[int] = []
    reuploaded = 0
    with CursorWatch(cluster.ledger) as cursors:
        started = time.monotonic()
        calls_before = dropbox.counts["files/list_folder/continue"]
        for wave in range(WAVES):
            base = wave * per_wave
            for n in range(base, base + per_wave):
                dropbox.put_file(f"{ROOT}/input/up {n:04d}.jpg", _tiny(n))
            if wave >= 1:  # delete a tenth of the previous wave
                gone = list(range(base - per_wave, base - per_wave + per_wave // 10))
                for n in gone:
                    dropbox.delete(f"{ROOT}/input/up {n:04d}.jpg")
                deleted.extend(gone)
            if wave >= 2:  # bring back, as new revisions, what the wave before deleted
                back = list(range(base - 2 * per_wave, base - 2 * per_wave + per_wave // 10))
                for n in back:
                    dropbox.put_file(f"{ROOT}/input/up {n:04d}.jpg", _tiny(n, version=wave))
                    deleted.remove(n)
                reuploaded += len(back)
            listed = dropbox.counts["files/list_folder/continue"]
            cluster.wait(
                lambda listed=listed: dropbox.counts["files/list_folder/continue"] > listed,
                30,
                f"a listing after wave {wave}",
            )

        current = {
            path.removeprefix(f"{ROOT}/input/").lower(): dropbox.metadata(path)["rev"]  # type: ignore[index]
            for path in dropbox.files_under(f"{ROOT}/input")
        }

        def discovered() -> bool:
            rows = cluster.ledger.rows()
            have = {_revision_key(row) for row in rows}
            return all((path, rev) in have for path, rev in current.items())

        cluster.wait(discovered, 60, "every current revision in the ledger")
        # Two more listings (a stale delete still to replay would land now), and a window of
        # at least WINDOW poll intervals, so that the call rate below tells one lister from
        # three.
        listed = dropbox.counts["files/list_folder/continue"]
        cluster.wait(
            lambda: (
                dropbox.counts["files/list_folder/continue"] >= listed + 2
                and time.monotonic() - started >= WINDOW * POLL
            ),
            WINDOW * POLL + 30,
            f"two more listings and {WINDOW} poll intervals",
        )
        elapsed = time.monotonic() - started
        calls = dropbox.counts["files/list_folder/continue"] - calls_before
    by_node = {
        node.name: sum(
            1
            for r in dropbox.requests_of(node.refresh_token)
            if r.path.startswith("/2/files/list_folder/continue")
        )
        for node in cluster.nodes
    }

    rows = cluster.ledger.rows()
    per_revision = Counter(_revision_key(row) for row in rows)
    doubled = [key for key, count in per_revision.items() if count != 1]
    skipped_current = [
        (row["path"], row["rev"], row["last_error"])
        for row in rows
        if current.get(row["path"].lower()) == row["rev"] and row["status"] == "skipped"
    ]
    stale_pending = [
        row["path"]
        for row in rows
        if current.get(row["path"].lower()) != row["rev"] and row["status"] == "pending"
    ]
    positions = [dropbox.cursor_position(cursor) for _, cursor in cursors.seen]
    backwards = [(a, b) for a, b in itertools.pairwise(positions) if b < a]
    intervals = elapsed / POLL
    figures = Figures("scale_out_discovery", UPLOADS, seconds=round(elapsed, 1))
    figures.extra.update(
        rows=len(rows),
        deleted=len(deleted),
        reuploaded=reuploaded,
        list_continue_calls=calls,
        poll_intervals=round(intervals, 1),
        cursor_writes_seen=len(positions),
        list_folder_calls=dropbox.counts["files/list_folder"],
        list_continue_calls_by_node=by_node,
    )
    report(figures)

    assert len(current) == UPLOADS - len(deleted)
    assert doubled == [], doubled[:5]
    assert skipped_current == [], skipped_current[:5]
    assert stale_pending == [], stale_pending[:5]
    assert backwards == [], backwards[:5]
    assert len(positions) >= WAVES
    # One lister: about one call per interval in total (each wave fits in one page).
    assert 0.25 * intervals <= calls <= 1.3 * intervals + 3, (calls, intervals, by_node)


# -- Adobe's limit --------------------------------------------------------------------------

LIMIT_PERIOD = 0.6  # long enough that a request's own duration costs < 5 % of a slot


@pytest.mark.slow
def test_three_nodes_share_adobes_submission_limit(
    make_cluster: Callable[..., Cluster], dropbox: FakeDropbox
) -> None:
    """Three nodes, one organisation: Adobe (strict: 2 per period, 429 beyond) never sees a
    third submission within a period, serves no 429, and the nodes together keep it at
    >= 90 % of its limit while work is queued."""
    adobe = start_adobe(
        dropbox, submit_limit=2, submit_period=LIMIT_PERIOD, validate_at_submit=False
    )
    try:
        count = 40
        batch = shots(count, prefix="limit", seed=33)
        put_shots(dropbox, batch)
        extra = {"photoshop": {"submit_limit": 2, "submit_period": LIMIT_PERIOD}}
        cluster = make_cluster(adobe, extra)
        cluster.start(3)
        cluster.wait_finished({s.name for s in batch}, 120)
        with adobe.lock:
            times = sorted(adobe.submit_times)
            limited = adobe.rate_limited
        figures = Figures("scale_out_adobe_limit", count)
        problems = check_dropbox_state(dropbox, cluster.ledger.rows(), batch, figures)
        span = times[-1] - times[0]
        rate = (len(times) - 1) / span if span > 0 else 0.0
        limit_rate = 2 / LIMIT_PERIOD
        nodes_submitting = _nodes_that_submitted(cluster)
        figures.engine_submissions = len(times)
        figures.seconds = round(span, 2)
        figures.extra.update(
            most_in_one_window=sliding_window_max(times, LIMIT_PERIOD),
            rate_limited_by_adobe=limited,
            submissions_per_s=round(rate, 3),
            share_of_limit=round(rate / limit_rate, 3),
            nodes_submitting=nodes_submitting,
        )
        report(figures)
    finally:
        adobe.stop()

    assert not problems, problems
    assert len(times) == count
    assert figures.extra["most_in_one_window"] <= 2, times
    assert limited == 0
    assert rate >= 0.9 * limit_rate, f"{rate:.2f}/s of {limit_rate:.2f}/s"
    assert nodes_submitting >= 2, "the work was shared"


def _nodes_that_submitted(cluster: Cluster) -> int:
    actors = {e["actor"] for e in cluster.ledger.events() if e["event"] == "submitted"}
    return len(actors & {node.name for node in cluster.nodes})


# -- output names ---------------------------------------------------------------------------

PAIRS = 100


def _pairs() -> list[Shot]:
    """`pair NNN.jpg` (an ellipse) and `pair NNN.png` (a rectangle elsewhere): both want
    `pair NNN.png` in output/, and their cutouts differ."""
    made = []
    for n in range(PAIRS):
        color = (30 + (n * 37) % 150, 40 + (n * 53) % 130, 200 - (n * 29) % 150)
        jpg, jpg_mask = shape_image(SMALL, shape="ellipse", color=color, box=(0.1, 0.1, 0.5, 0.9))
        png, png_mask = shape_image(
            SMALL, shape="rectangle", color=color, box=(0.55, 0.3, 0.9, 0.7)
        )
        made.append(Shot(f"pair {n:03d}.jpg", encode(jpg, "JPEG", quality=95), jpg_mask))
        made.append(Shot(f"pair {n:03d}.png", encode(png, "PNG"), png_mask))
    return made


@pytest.mark.slow
def test_pairs_with_one_output_name_on_two_nodes(
    make_cluster: Callable[..., Cluster], dropbox: FakeDropbox
) -> None:
    """100 pairs `x.jpg` + `x.png` in one folder, two nodes, many workers each: every input
    gets its own output (`x.png` for one, `x.<ext>.png` for the other), and each output is
    that input's cutout: no name is taken twice, nothing is overwritten."""
    adobe = start_adobe(dropbox, submit_limit=100, latency=(0.02, 0.1))
    try:
        batch = _pairs()
        put_shots(dropbox, batch)
        extra = {"photoshop": {"submit_limit": 50, "max_in_flight": 8}}
        cluster = make_cluster(adobe, extra)
        cluster.start(2)
        cluster.wait_finished({s.name for s in batch}, 240)
        rows = cluster.ledger.rows()
        outputs = dropbox.files_under(f"{ROOT}/output")
    finally:
        adobe.stop()

    by_input = {shot.name: shot for shot in batch}
    named = {row["path"]: row["output_path"] for row in rows}
    wrong = []
    for name, output in sorted(named.items()):
        data = outputs.get(f"{ROOT}/output/{output}")
        if data is None or not is_png(data):
            wrong.append(f"{name}: no output {output}")
        elif alpha_iou(data, by_input[name].mask) < 0.9:
            wrong.append(f"{name}: {output} is not its cutout")
    figures = Figures("scale_out_output_names", len(batch))
    figures.extra.update(
        outputs=len(outputs), wrong=len(wrong), nodes_submitting=_nodes_that_submitted(cluster)
    )
    report(figures)

    assert set(named) == set(by_input)
    assert wrong == [], wrong[:5]
    assert len(set(named.values())) == len(batch) == len(outputs)
    assert all(
        {named[f"pair {n:03d}.jpg"], named[f"pair {n:03d}.png"]} & {f"pair {n:03d}.png"}
        for n in range(PAIRS)
    ), "one of each pair has the plain name"
    assert figures.extra["nodes_submitting"] == 2, "both nodes worked"
