"""Crash suite: the real `cutoutd run`, SIGKILLed at random moments and restarted, then
`run --once` to finish. Nothing may be lost, duplicated or left half-done.

Scale (environment variables, defaults sized for CI; `bench/soak.py` runs longer):
`CUTOUTD_CRASH_KILLS` (20), `CUTOUTD_CRASH_IMAGES` (200, Dropbox + Photoshop),
`CUTOUTD_CRASH_LOCAL_IMAGES` (200; the local model costs ~0.3-0.7 s of CPU per image, so
its kills come up to `LOCAL_WINDOW` s after start-up, to spread them over the run),
`CUTOUTD_CRASH_SEED` (random; printed, so that a failure can be replayed).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

from tests.e2e.conftest import run_cutoutd
from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakePhotoshop
from tests.reliability.harness import (
    ROOT,
    Daemon,
    Figures,
    check_dropbox_state,
    check_local_state,
    crash_loop,
    dropbox_sections,
    environment,
    ledger_events,
    ledger_rows,
    local_sections,
    merge,
    put_shots,
    report,
    shots,
    wait_until,
    write_config,
    write_shots,
)

LOCAL_SIZE = (160, 120)  # the model sees 320x320 anyway; at 96x72 its masks get coarse
LOCAL_WINDOW = 8.0


def _setting(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _seed() -> int:
    seed = _setting("CUTOUTD_CRASH_SEED", random.randrange(1_000_000))
    print(f"CUTOUTD_CRASH_SEED={seed}")
    return seed


def _received(ledger: Path) -> int:
    """`result_received` events so far (0 while the ledger is not there yet)."""
    try:
        return sum(1 for event in ledger_events(ledger) if event["event"] == "result_received")
    except sqlite3.OperationalError:
        return 0


def _claims(ledger: Path) -> int:
    return sum(1 for event in ledger_events(ledger) if event["event"] == "claimed")


def test_sigkill_dropbox_photoshop(
    dropbox: FakeDropbox, adobe: FakePhotoshop, tmp_path: Path
) -> None:
    kills, count = _setting("CUTOUTD_CRASH_KILLS", 20), _setting("CUTOUTD_CRASH_IMAGES", 200)
    rng = random.Random(_seed())
    batch = shots(count)
    put_shots(dropbox, batch)
    ledger = tmp_path / "ledger.sqlite3"
    config = write_config(tmp_path / "cutoutd.toml", dropbox_sections(ledger, adobe))
    env = environment(dropbox, adobe)
    started = time.monotonic()

    daemon = Daemon(config, env, tmp_path / "logs")
    figures = Figures("crash_dropbox_photoshop", count)
    figures.kills, figures.kills_while_running = crash_loop(daemon, kills, rng)
    figures.extra["done_before_final_run"] = sum(
        1 for row in ledger_rows(ledger) if row["status"] == "succeeded"
    )
    final = run_cutoutd("--config", str(config), "run", "--once", env=env, timeout=240)
    figures.seconds = round(time.monotonic() - started, 1)

    rows = ledger_rows(ledger)
    problems = check_dropbox_state(dropbox, rows, batch, figures)
    per_name = adobe.submissions_by_name()
    figures.engine_submissions = sum(per_name.values())
    figures.duplicate_submissions = sum(n - 1 for n in per_name.values() if n > 1)
    figures.resumed_jobs = daemon.count("cutout.resumed") + final.stderr.count('"cutout.resumed"')
    figures.claims = _claims(ledger)
    figures.extra["rate_limited_by_adobe"] = adobe.rate_limited
    report(figures)

    assert final.returncode == 0, final.stderr[-4000:]
    assert not problems, problems
    assert set(per_name) == {s.name for s in batch}
    assert figures.duplicate_submissions <= figures.kills
    assert figures.lost_inputs == figures.duplicate_outputs == figures.non_terminal == 0


def test_sigkill_local_folder_local_engine(tmp_path: Path) -> None:
    kills, count = _setting("CUTOUTD_CRASH_KILLS", 20), _setting("CUTOUTD_CRASH_LOCAL_IMAGES", 200)
    rng = random.Random(_seed())
    root = tmp_path / "RemoveBGProcess"
    batch = shots(count, prefix="local", size=LOCAL_SIZE)
    write_shots(root / "input", batch)
    ledger = tmp_path / "ledger.sqlite3"
    config = write_config(tmp_path / "cutoutd.toml", local_sections(root, ledger))
    started = time.monotonic()

    daemon = Daemon(config, {}, tmp_path / "logs")
    figures = Figures("crash_local", count)
    figures.kills, figures.kills_while_running = crash_loop(daemon, kills, rng, LOCAL_WINDOW)
    figures.extra["done_before_final_run"] = sum(
        1 for row in ledger_rows(ledger) if row["status"] == "succeeded"
    )
    final = run_cutoutd("--config", str(config), "run", "--once", timeout=240)
    figures.seconds = round(time.monotonic() - started, 1)

    rows = ledger_rows(ledger)
    problems = check_local_state(root, rows, batch, figures)
    figures.claims = _claims(ledger)
    figures.extra["engine_runs_repeated"] = figures.claims - count
    report(figures)

    assert final.returncode == 0, final.stderr[-4000:]
    assert not problems, problems
    assert figures.lost_inputs == figures.duplicate_outputs == figures.non_terminal == 0


def test_sigkill_between_result_received_and_output_written(
    dropbox: FakeDropbox, adobe: FakePhotoshop, tmp_path: Path
) -> None:
    """Every upload hangs, so each image stops after Adobe's result was received; the daemon
    is SIGKILLed there. The restart writes every output from the spool: no new submission.
    Adobe's result URLs live 1 s, so a result not kept could not even be fetched again."""
    count = 6
    adobe.result_ttl = 1.0
    batch = shots(count, prefix="spooled", seed=21)
    put_shots(dropbox, batch)
    ledger = tmp_path / "ledger.sqlite3"
    sections = merge(dropbox_sections(ledger, adobe), {"dropbox": {"timeout": 60}})
    config = write_config(tmp_path / "cutoutd.toml", sections)
    env = environment(dropbox, adobe)
    dropbox.slow(8.0, routes=["files/upload"])  # longer than the wait below, short of timeout

    daemon = Daemon(config, env, tmp_path / "logs").start()
    wait_until(
        lambda: _received(ledger) == count,
        60,
        daemon=daemon,
        what="every result received",
    )
    daemon.kill()
    submitted_before = sum(adobe.submissions_by_name().values())
    written_before = len(dropbox.files_under(f"{ROOT}/output"))
    dropbox.clear_faults()
    final = run_cutoutd("--config", str(config), "run", "--once", env=env, timeout=240)

    rows = ledger_rows(ledger)
    figures = Figures("crash_between_result_and_output", count, kills=1, kills_while_running=1)
    problems = check_dropbox_state(dropbox, rows, batch, figures)
    per_name = adobe.submissions_by_name()
    figures.engine_submissions = sum(per_name.values())
    figures.duplicate_submissions = sum(n - 1 for n in per_name.values() if n > 1)
    figures.extra.update(
        outputs_before_restart=written_before,
        results_from_spool=final.stderr.count('"cutout.from_spool"'),
        new_submissions_after_restart=figures.engine_submissions - submitted_before,
    )
    report(figures)
    assert final.returncode == 0, final.stderr[-4000:]
    assert not problems, problems
    assert submitted_before == count and figures.extra["new_submissions_after_restart"] == 0
    assert figures.extra["results_from_spool"] == count - written_before
