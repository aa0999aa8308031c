"""Fault matrix (issue 7 item 2): the real `cutoutd run` against the fakes (the real dropbox
SDK over HTTPS, real HTTP to the Photoshop fake), one fault at a time.

Shape: 3 images are processed, the fault starts, 6 more images arrive, and the scenario ends
when all 9 are correct (one PNG cutout each, input archived, ledger and Dropbox agreeing)
while the same daemon process stayed up, then stops it with SIGTERM (exit 0). Revoked
credentials instead end with exit 77 after one clear message, losing nothing.

Time is scaled down as in the harness: retry backoff 0.2 s doubling over 5 attempts (an
item's whole retry budget is ~3 s, the default's is ~7 min), Adobe's 3 s window as 0.3 s,
Dropbox unreachable for 6 s (two retry budgets: "minutes" at the default scale).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import CUTOUTD, run_cutoutd
from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakePhotoshop
from tests.reliability.harness import (
    ROOT,
    SMALL,
    Daemon,
    Figures,
    Sections,
    Shot,
    check_dropbox_state,
    dropbox_sections,
    environment,
    event_counts,
    ledger_rows,
    merge,
    put_shots,
    report,
    shots,
    wait_until,
    wait_until_finished,
    write_config,
)

FIRST, SECOND, LATE = 3, 6, 3  # images before the fault, during it, and arriving late
TIMEOUT = 60.0
OUTAGE = 6.0  # seconds Dropbox is unreachable: twice an item's retry budget
EX_NOPERM = 77


@dataclass
class Rig:
    """Both fakes, a config and the daemon for one scenario."""

    dropbox: FakeDropbox
    adobe: FakePhotoshop
    tmp_path: Path
    extra: Sections | None = None
    ledger: Path | None = None
    batch: list[Shot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger = self.ledger or self.tmp_path / "ledger.sqlite3"
        sections = merge(dropbox_sections(self.ledger, self.adobe), self.extra)
        self.config = write_config(self.tmp_path / "cutoutd.toml", sections)
        self.env = environment(self.dropbox, self.adobe)
        self.daemon = Daemon(self.config, self.env, self.tmp_path / "logs")

    @property
    def ledger_path(self) -> Path:
        assert self.ledger is not None
        return self.ledger

    def add(self, count: int, seed: int) -> list[Shot]:
        batch = shots(count, prefix=f"s{seed}", seed=seed)
        put_shots(self.dropbox, batch)
        self.batch.extend(batch)
        return batch

    def start_and_finish_first(self) -> None:
        self.add(FIRST, seed=1)
        self.daemon.start()
        self.finished()

    def finished(self, timeout: float = TIMEOUT) -> float:
        return wait_until_finished(self.ledger_path, self.batch, timeout, self.daemon)

    def log_lines(self, text: str) -> int:
        return sum(1 for line in self.daemon.stderr().splitlines() if text in line)

    def conclude(self, figures: Figures, *, stop: bool = True) -> list[str]:
        """Stop the daemon (drain), check storage and ledger, fill in the common figures."""
        code = self.daemon.stop() if stop else 0
        problems = [] if code == 0 else [f"cutoutd exited {code}"]
        rows = ledger_rows(self.ledger_path)
        problems += check_dropbox_state(self.dropbox, rows, self.batch, figures)
        per_name = self.adobe.submissions_by_name()
        events = event_counts(self.ledger_path)
        figures.engine_submissions = sum(per_name.values())
        figures.duplicate_submissions = sum(n - 1 for n in per_name.values() if n > 1)
        figures.claims = events["claimed"]
        figures.resumed_jobs = self.daemon.count("cutout.resumed")
        figures.extra.update(
            retries=events["retry_scheduled"],
            released=events["released"],
            failed_discoveries=self.daemon.count("discovery.retry"),
            daemon_starts=self.daemon.runs,
            adobe_429s=self.adobe.rate_limited,
            adobe_token_requests=self.adobe.token_requests,
            dropbox_faults=dict(self.dropbox.faulted),
            dropbox_token_requests=self.dropbox.counts["oauth2/token"],
        )
        return problems

    def kill(self) -> None:
        """SIGKILL a daemon a failed scenario left running."""
        if self.daemon.alive():
            self.daemon.kill()


@pytest.fixture
def make_rig(
    dropbox: FakeDropbox, adobe: FakePhotoshop, tmp_path: Path
) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(extra: Sections | None = None, ledger: Path | None = None) -> Rig:
        made.append(Rig(dropbox, adobe, tmp_path, extra, ledger))
        return made[-1]

    yield make
    for rig in made:
        rig.kill()


# -- faults that come and go: the daemon rides them out ------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[Rig], object]
    served: Callable[[Rig], int]  # how many faulty answers went out (must be > 0)
    config: Sections | None = None
    max_duplicates: int = 0  # submissions Adobe carried out but the daemon never heard of

    def __str__(self) -> str:
        return self.name


def _adobe_statuses(rig: Rig, low: int, high: int) -> int:
    with rig.adobe.lock:
        return sum(1 for _, _, status in rig.adobe.log if low <= status <= high)


FAULTS = [
    Fault(
        "dropbox_429_storm",
        lambda r: r.dropbox.rate_limit(30, retry_after=1, probability=0.5),
        lambda r: r.dropbox.faulted["rate_limit"],
    ),
    Fault(
        "adobe_429_storm",
        lambda r: r.adobe.force_rate_limit(15, retry_after=0.5),
        lambda r: r.adobe.rate_limited,
    ),
    Fault(
        "dropbox_5xx_burst",
        lambda r: r.dropbox.server_errors(20, status=503, probability=0.7),
        lambda r: r.dropbox.faulted["server_error"],
    ),
    Fault(
        "adobe_5xx_burst",
        lambda r: (
            r.adobe.inject_errors(4, 500, "submit"),
            r.adobe.inject_errors(4, 503, "status", "service_unavailable"),
        ),
        lambda r: _adobe_statuses(r, 500, 599),
    ),
    Fault(
        "dropbox_connection_resets",
        lambda r: r.dropbox.reset_connections(16, probability=0.5),
        lambda r: r.dropbox.faulted["reset"],
    ),
    Fault(
        "adobe_connection_resets",
        lambda r: (
            r.adobe.reset_next_calls(3, "submit"),
            r.adobe.reset_next_calls(3, "status"),
            r.adobe.reset_next_calls(2, "result"),
        ),
        lambda r: r.adobe.troubles_served["reset"],
    ),
    Fault(
        "dropbox_timeouts",  # answers slower than [dropbox] timeout
        lambda r: r.dropbox.slow(1.5, count=6),
        lambda r: r.log_lines("Timeout"),
        config={"dropbox": {"timeout": 1}},
    ),
    Fault(
        # Slower than [photoshop] request_timeout. A submission that timed out was still
        # carried out by Adobe (no idempotency key exists): a duplicate, paid for.
        "adobe_timeouts",
        lambda r: r.adobe.delay_next_calls(6, 1.5),
        lambda r: r.adobe.troubles_served["delay"],
        config={"photoshop": {"request_timeout": 1}},
        max_duplicates=6,
    ),
    Fault(
        "slow_responses",  # slow, within the timeouts
        lambda r: (r.dropbox.slow(0.3, count=80), r.adobe.delay_next_calls(40, 0.3)),
        lambda r: r.adobe.troubles_served["delay"],
    ),
    Fault(
        "ims_401_mid_run",  # every token issued so far is rejected (expired, rotated)
        lambda r: r.adobe.revoke_tokens(),
        lambda r: _adobe_statuses(r, 401, 401),
    ),
    Fault(
        "dropbox_access_token_expiry",
        lambda r: r.dropbox.expire_access_tokens(),
        lambda r: r.dropbox.counts["oauth2/token"] - 1,
    ),
    Fault(
        "cursor_reset",
        lambda r: r.dropbox.reset_cursors(),
        lambda r: r.daemon.count("cursor.reset"),
    ),
    Fault(
        "result_url_410",  # the result URL expired between `succeeded` and the download
        lambda r: r.adobe.expire_next_results(3),
        lambda r: r.adobe.troubles_served["expire"],
        max_duplicates=3,  # each costs a new submission: the old result is gone
    ),
    Fault(
        # Links live 0.3 s (Dropbox: 4 h) and submissions wait 0.5 s Retry-After pauses: a
        # link taken before the wait is dead when Adobe fetches it.
        "temporary_link_expired",
        lambda r: (
            setattr(r.dropbox, "temporary_link_ttl", 0.3),
            r.adobe.force_rate_limit(6, retry_after=0.5),
        ),
        lambda r: r.adobe.rate_limited,
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_daemon_rides_out(fault: Fault, make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(fault.config)
    rig.start_and_finish_first()
    started = time.monotonic()
    fault.inject(rig)
    rig.add(SECOND, seed=2)
    rig.finished()
    figures = Figures(f"fault_{fault.name}", FIRST + SECOND)
    figures.seconds = round(time.monotonic() - started, 2)
    figures.extra["faults_served"] = fault.served(rig)
    problems = rig.conclude(figures)
    report(figures)
    assert not problems, problems
    assert figures.extra["faults_served"] > 0
    assert figures.duplicate_submissions <= fault.max_duplicates
    assert rig.log_lines("unexpected error") == 0


def test_dropbox_unreachable_for_a_while(make_rig: Callable[..., Rig]) -> None:
    """Dropbox goes away while 6 images are at Adobe (their outputs cannot be written, their
    inputs not archived), 3 more arrive meanwhile, and it comes back on the same port."""
    rig = make_rig()
    rig.start_and_finish_first()
    rig.adobe.latency = (1.0, 1.5)  # the jobs finish while Dropbox is away
    rig.add(SECOND, seed=2)
    wait_until(lambda: rig.adobe.submissions == FIRST + SECOND, TIMEOUT, daemon=rig.daemon)
    started = time.monotonic()
    rig.dropbox.go_offline()
    rig.add(LATE, seed=3)  # uploaded by another client meanwhile
    time.sleep(OUTAGE)
    assert rig.daemon.alive(), rig.daemon.stderr()[-3000:]
    rig.dropbox.come_back()
    back = time.monotonic()
    rig.finished()
    figures = Figures("fault_dropbox_unreachable", FIRST + SECOND + LATE)
    figures.seconds = round(time.monotonic() - started, 2)
    figures.extra.update(
        outage_seconds=OUTAGE, seconds_to_finish_after_return=round(time.monotonic() - back, 2)
    )
    problems = rig.conclude(figures)
    report(figures)
    assert not problems, problems


# -- the ledger: audit readers, a held write lock, a full disk -----------------------------------


def _audit_export(rig: Rig) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CUTOUTD, "--config", str(rig.config), "ledger", "export", "--events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **rig.env},
    )


def test_ledger_busy_with_audits(make_rig: Callable[..., Rig]) -> None:
    """A reader holds a snapshot for the whole run, `ledger export --events` runs in a loop,
    and a writer holds the write lock for 3 s: the daemon waits, then goes on."""
    rig = make_rig()
    rig.start_and_finish_first()
    reader = sqlite3.connect(rig.ledger_path, isolation_level=None, timeout=30)
    reader.execute("BEGIN")
    held_rows = reader.execute("SELECT count(*) FROM events").fetchone()[0]
    exports, export_failures, done = [0], [0], threading.Event()

    def export_loop() -> None:
        while not done.is_set():
            process = _audit_export(rig)
            process.communicate(timeout=60)
            exports[0] += 1
            export_failures[0] += process.returncode != 0

    exporter = threading.Thread(target=export_loop, daemon=True)
    exporter.start()
    started = time.monotonic()
    rig.add(SECOND, seed=2)
    wait_until(lambda: rig.adobe.submissions >= FIRST + 1, TIMEOUT, daemon=rig.daemon)
    writer = sqlite3.connect(rig.ledger_path, isolation_level=None, timeout=30)
    writer.execute("BEGIN IMMEDIATE")
    time.sleep(3.0)
    writer.execute("ROLLBACK")
    writer.close()
    rig.finished()
    # the snapshot is still the one from before the images arrived
    assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == held_rows
    reader.execute("COMMIT")
    reader.close()
    done.set()
    exporter.join(60)
    figures = Figures("fault_ledger_busy", FIRST + SECOND)
    figures.seconds = round(time.monotonic() - started, 2)
    figures.extra.update(
        exports=exports[0],
        export_failures=export_failures[0],
        write_lock_held_seconds=3.0,
        ledger_errors_logged=rig.log_lines("ledger unavailable"),  # busy timeout is 30 s
    )
    problems = rig.conclude(figures)
    report(figures)
    assert not problems, problems
    assert exports[0] > 0 and export_failures[0] == 0
    assert figures.extra["ledger_errors_logged"] == 0


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (tmpfs): writes past its size fail with ENOSPC, as on a full
    disk. Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full disk ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> int:
    """Fill the filesystem of `folder` to the last byte; the bytes written."""
    written = 0
    with (folder / "filler").open("wb", buffering=0) as filler:
        chunk = b"\0" * 65536
        while True:
            try:
                written += filler.write(chunk) or 0
            except OSError:
                break
        for size in (4096, 512, 1):
            try:
                while True:
                    written += filler.write(b"\0" * size) or 0
            except OSError:
                pass
    return written


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_ledger_disk_full(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    """The ledger's filesystem fills up while 6 images are at Adobe and 3 more arrive; the
    space returns after a while."""
    with small_tmpfs(tmp_path / "state", "4m") as state:
        rig = make_rig(ledger=state / "ledger.sqlite3")
        try:
            figures, problems = _fill_the_disk_mid_run(rig, state)
        finally:
            rig.kill()  # before the tmpfs goes away under it
    report(figures)
    assert not problems, problems
    assert figures.extra["ledger_errors_logged"] > 0


def _fill_the_disk_mid_run(rig: Rig, state: Path) -> tuple[Figures, list[str]]:
    rig.start_and_finish_first()
    rig.adobe.latency = (1.0, 1.5)  # the jobs finish while the disk is full
    rig.add(SECOND, seed=2)
    wait_until(lambda: rig.adobe.submissions == FIRST + SECOND, TIMEOUT, daemon=rig.daemon)
    started = time.monotonic()
    filled = _fill(state)
    rig.add(LATE, seed=3)
    time.sleep(OUTAGE)
    assert rig.daemon.alive(), rig.daemon.stderr()[-3000:]
    errors = rig.log_lines("ledger unavailable")
    (state / "filler").unlink()
    back = time.monotonic()
    rig.finished()
    figures = Figures("fault_ledger_disk_full", FIRST + SECOND + LATE)
    figures.seconds = round(time.monotonic() - started, 2)
    figures.extra.update(
        disk_full_seconds=OUTAGE,
        filler_bytes=filled,
        ledger_errors_logged=errors,
        disk_full_errors_logged=rig.log_lines("database or disk is full"),
        seconds_to_finish_after_space_returned=round(time.monotonic() - back, 2),
    )
    return figures, rig.conclude(figures)


# -- revoked credentials: exit 77 with one clear message, nothing lost ---------------------------


@dataclass(frozen=True)
class Revocation:
    name: str
    revoke: Callable[[Rig], object]  # breaks the credentials (in the fakes or the env)
    restore: Callable[[Rig], object]  # fixes them for the run that finishes the work
    mid_run: bool

    def __str__(self) -> str:
        return self.name


def _revoke_refresh_token(rig: Rig) -> None:
    rig.dropbox.revoke_refresh_token()
    rig.dropbox.expire_access_tokens()  # so that the SDK must use the refresh token


def _new_refresh_token(rig: Rig) -> None:
    rig.env["DROPBOX_REFRESH_TOKEN"] = rig.dropbox.issue_refresh_token()


def _rotate_client_secret(rig: Rig) -> None:
    rig.adobe.client_secret = "rotated-client-secret"
    rig.adobe.revoke_tokens()  # the running daemon must fetch a new IMS token


def _wrong_client_secret(rig: Rig) -> None:
    rig.env["CLIENT_SECRET"] = "wrong-client-secret"


def _right_client_secret(rig: Rig) -> None:
    rig.env["CLIENT_SECRET"] = rig.adobe.client_secret


REVOCATIONS = [
    Revocation("dropbox_refresh_token_revoked_at_start", _revoke_refresh_token,
               _new_refresh_token, mid_run=False),
    Revocation("dropbox_refresh_token_revoked_mid_run", _revoke_refresh_token,
               _new_refresh_token, mid_run=True),
    Revocation("ims_client_secret_wrong_at_start", _wrong_client_secret,
               _right_client_secret, mid_run=False),
    Revocation("ims_client_secret_rotated_mid_run", _rotate_client_secret,
               _right_client_secret, mid_run=True),
]  # fmt: skip


@pytest.mark.parametrize("revocation", REVOCATIONS, ids=str)
def test_revoked_credentials_stop_the_daemon(
    revocation: Revocation, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    if revocation.mid_run:
        rig.start_and_finish_first()
        revocation.revoke(rig)
        rig.add(SECOND, seed=2)
    else:
        revocation.revoke(rig)
        rig.add(FIRST + SECOND, seed=3)
        rig.daemon.start()  # rig.daemon.env is rig.env: it sees the broken credentials
    started = time.monotonic()
    code = rig.daemon.wait(30)
    figures = Figures(f"credentials_{revocation.name}", FIRST + SECOND)
    figures.seconds = round(time.monotonic() - started, 2)
    stderr = rig.daemon.stderr()
    criticals = [line for line in stderr.splitlines() if '"CRITICAL"' in line]
    figures.extra.update(
        exit_code=code,
        critical_lines=len(criticals),
        dropbox_token_requests_before_exit=rig.dropbox.counts["oauth2/token"],
        adobe_token_requests_before_exit=rig.adobe.token_requests,
        failed_before_restart=sum(
            1 for row in ledger_rows(rig.ledger_path) if row["status"] == "failed"
        ),
    )
    assert code == EX_NOPERM, stderr[-3000:]
    assert len(criticals) == 1 and stderr.count("cutoutd: credentials rejected:") == 1
    assert figures.extra["failed_before_restart"] == 0
    assert not rig.dropbox.files_under(f"{ROOT}/failed")

    revocation.restore(rig)  # the operator fixes the credentials: nothing was lost
    final = run_cutoutd("--config", str(rig.config), "run", "--once", env=rig.env, timeout=120)
    assert final.returncode == 0, final.stderr[-3000:]
    problems = rig.conclude(figures, stop=False)
    report(figures)
    assert not problems, problems


# -- Dropbox write limits on uploads and moves, `run --once` (issue 11) --------------------------

UPLOAD = "files/upload"
MOVES = ("files/move_batch_v2", "files/move_v2", "files/move_batch/check_v2")
WRITE_LIMIT_IMAGES = 16
LOCAL_SIZE = (160, 120)  # the local model's masks get coarse at the default 96x72


@dataclass(frozen=True)
class WriteLimits:
    engine: str
    probability: float
    routes: tuple[str, ...] = (UPLOAD, *MOVES)
    rate_limit_wait: float = 60.0  # the default: every 429 is waited out in place
    seed: int = 0

    def __str__(self) -> str:
        wait = "" if self.rate_limit_wait == 60.0 else "_given_back"
        return f"{self.engine}_{int(self.probability * 100)}pct{wait}"


WRITE_LIMITS = [
    WriteLimits("photoshop", 0.1, seed=3),
    WriteLimits("photoshop", 0.2, seed=20),
    WriteLimits("local", 0.1, seed=10),
    WriteLimits("local", 0.2, seed=20),
    # a wait shorter than Retry-After: every 429 on an upload gives the claim back, and the
    # next claim writes the result kept in the spool (the issue's double-billing case)
    WriteLimits("photoshop", 0.2, routes=(UPLOAD,), rate_limit_wait=0.5, seed=20),
]


@pytest.mark.parametrize("case", WRITE_LIMITS, ids=str)
def test_dropbox_write_limits_with_run_once(
    case: WriteLimits, dropbox: FakeDropbox, adobe: FakePhotoshop, tmp_path: Path
) -> None:
    """10-20 % of uploads and moves answer 429 with Retry-After 1. Adobe's result URLs
    live 1 s here, so an image that threw its result away and came back after the
    Retry-After would have to be submitted (and paid for) again: the spool prevents it."""
    ledger = tmp_path / "ledger.sqlite3"
    photoshop = adobe if case.engine == "photoshop" else None
    adobe.result_ttl = 1.0
    sections = merge(
        dropbox_sections(ledger, photoshop), {"retry": {"rate_limit_wait": case.rate_limit_wait}}
    )
    config = write_config(tmp_path / "cutoutd.toml", sections)
    size = LOCAL_SIZE if photoshop is None else SMALL
    batch = shots(WRITE_LIMIT_IMAGES, prefix=f"w{case.engine}", seed=11, size=size)
    put_shots(dropbox, batch)
    dropbox.reseed(case.seed)
    for route in case.routes[:2]:  # the first upload and batch move are always among them
        dropbox.rate_limit(1, retry_after=1, routes=[route])
    dropbox.rate_limit(None, retry_after=1, routes=list(case.routes), probability=case.probability)
    started = time.monotonic()
    result = run_cutoutd(
        "--config", str(config), "run", "--once", env=environment(dropbox, photoshop), timeout=300
    )
    figures = Figures(f"write_limits_{case}", len(batch))
    figures.seconds = round(time.monotonic() - started, 2)
    rows = ledger_rows(ledger)
    problems = check_dropbox_state(dropbox, rows, batch, figures)  # archived when it returned
    per_name = adobe.submissions_by_name()
    events = event_counts(ledger)
    served = {
        route: n for (kind, route), n in dropbox.faulted_routes.items() if kind == "rate_limit"
    }
    figures.engine_submissions = sum(per_name.values())
    figures.duplicate_submissions = sum(n - 1 for n in per_name.values() if n > 1)
    figures.claims = events["claimed"]
    figures.extra.update(
        engine=case.engine,
        rate_limited_share=case.probability,
        rate_limit_wait=case.rate_limit_wait,
        dropbox_429s=dropbox.faulted["rate_limit"],
        faulted_route_calls=sum(dropbox.counts[route] for route in case.routes),
        upload_429s=served.get(UPLOAD, 0),
        move_429s=sum(served.get(route, 0) for route in MOVES),
        waits_in_place=result.stderr.count('"storage.rate_limited"'),
        move_batch_calls=dropbox.counts["files/move_batch_v2"],
        released=events["released"],
        retries=events["retry_scheduled"],
        results_from_spool=events["result_from_spool"],
        exit_code=result.returncode,
    )
    report(figures)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not problems, problems
    assert figures.extra["upload_429s"] > 0
    assert figures.extra["move_429s"] > 0 or case.routes == (UPLOAD,)
    assert figures.duplicate_submissions == 0
    if photoshop is not None:
        assert figures.engine_submissions == len(batch)
    if case.rate_limit_wait < 1:
        assert events["released"] > 0 and events["result_from_spool"] == events["released"]
    assert events["retry_scheduled"] == 0  # never the image's backoff
    assert all(row["attempts"] == 1 for row in rows)  # never its attempts
