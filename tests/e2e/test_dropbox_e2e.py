"""The real `cutoutd` command with `[source] kind = "dropbox"` and the local engine,
against the HTTPS Dropbox fake (recipe B: the SDK's host variables, REQUESTS_CA_BUNDLE
and DROPBOX_* credentials in the subprocess environment)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import CUTOUTD, run_cutoutd
from tests.fakes.dropbox_server import FakeDropbox
from tests.helpers import alpha_iou, encode, shape_image

ROOT = "/RemoveBGProcess"


@pytest.fixture
def fake() -> Iterator[FakeDropbox]:
    with FakeDropbox(https=True) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cutoutd.toml"
    path.write_text(
        f'[source]\nkind = "dropbox"\nroot = "{ROOT}"\npoll_interval = 0.5\nsettle_seconds = 0\n'
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.sqlite3"}"\n'
        "[retry]\nbackoff_initial = 0.2\nbackoff_multiplier = 1\nmax_attempts = 10\n"
        "[dropbox]\ntimeout = 20\nmax_retries_on_error = 1\nmax_retries_on_rate_limit = 3\n"
        '[log]\nformat = "json"\nlevel = "INFO"\n'
    )
    return path


def put_images(fake: FakeDropbox, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    masks = {}
    for n, name in enumerate(names):
        shape = "ellipse" if (n + seed) % 2 else "rectangle"
        k = n + 5 * seed  # distinct colours: identical bytes would be deduplicated
        color = (20 + (13 * k) % 200, 60 + k, 210 - 7 * k)
        image, mask = shape_image((320, 240), shape=shape, color=color)
        fake.put_file(f"{ROOT}/input/{name}", encode(image, "JPEG", quality=95))
        masks[name] = mask
    return masks


def run_once(fake: FakeDropbox, config: Path) -> subprocess.CompletedProcess[str]:
    env = fake.daemon_environment()
    result = run_cutoutd("--config", str(config), "run", "--once", env=env)
    assert fake.refresh_token not in result.stderr
    assert not any(token in result.stderr for token in fake.access_tokens)
    return result


def ledger_rows(config: Path) -> list[dict[str, Any]]:
    listing = run_cutoutd("--config", str(config), "ledger", "list", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    rows: list[dict[str, Any]] = json.loads(listing.stdout)
    return rows


def output_of(name: str) -> str:
    return f"{ROOT}/output/{name.rsplit('.', 1)[0]}.png"


def assert_cut_out(fake: FakeDropbox, masks: dict[str, np.ndarray]) -> None:
    outputs = fake.files_under(f"{ROOT}/output")
    archived = fake.files_under(f"{ROOT}/archive")
    for name, mask in masks.items():
        assert alpha_iou(outputs[output_of(name)], mask) >= 0.9, name
        assert f"{ROOT}/archive/{name}" in archived, name


def test_run_once_cuts_out_archives_and_reprocesses_new_revisions(
    fake: FakeDropbox, config: Path
) -> None:
    masks = put_images(fake, ["Photo 1.jpg", "Ünï #2.JPG", "plain.jpg"])
    result = run_once(fake, config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "processed 3: 3 succeeded, 0 failed, 0 skipped; 0 still pending"
    assert_cut_out(fake, masks)
    assert fake.files_under(f"{ROOT}/input") == {}

    again = put_images(fake, ["Photo 1.jpg"], seed=1)  # a new revision of the same name
    result = run_once(fake, config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("processed 1: 1 succeeded")
    outputs = fake.files_under(f"{ROOT}/output")
    assert alpha_iou(outputs[output_of("Photo 1.jpg")], again["Photo 1.jpg"]) >= 0.9
    assert f"{ROOT}/archive/Photo 1 (1).jpg" in fake.files_under(f"{ROOT}/archive")
    rows = [r for r in ledger_rows(config) if r["path"] == "Photo 1.jpg"]
    assert len(rows) == 2 and len({r["rev"] for r in rows}) == 2


def test_deleted_before_processing_is_skipped(fake: FakeDropbox, config: Path) -> None:
    masks = put_images(fake, ["keep.jpg", "vanish.jpg"])

    def vanish(route: str, arg: Any) -> None:
        if route == "files/download" and arg["path"].lower().endswith("/vanish.jpg"):
            fake.delete(f"{ROOT}/input/vanish.jpg")

    fake.hooks.append(vanish)
    result = run_once(fake, config)
    assert result.returncode == 0, result.stderr
    assert "1 succeeded" in result.stdout and "1 skipped" in result.stdout
    assert_cut_out(fake, {"keep.jpg": masks["keep.jpg"]})
    assert output_of("vanish.jpg") not in fake.files_under(f"{ROOT}/output")
    statuses = {r["path"]: r["status"] for r in ledger_rows(config)}
    assert statuses == {"keep.jpg": "succeeded", "vanish.jpg": "skipped"}


def test_cursor_reset_mid_listing_creates_no_duplicates(fake: FakeDropbox, config: Path) -> None:
    fake.page_size = 2
    masks = put_images(fake, [f"img{n}.jpg" for n in range(5)])
    resets: list[str] = []

    def reset_once(route: str, arg: Any) -> None:
        if route == "files/list_folder/continue" and not resets:
            resets.append(route)
            fake.reset_cursors()

    fake.hooks.append(reset_once)
    result = run_once(fake, config)
    assert result.returncode == 0, result.stderr
    assert resets and "cursor.reset" in result.stderr
    assert result.stdout.startswith("processed 5: 5 succeeded")
    assert_cut_out(fake, masks)
    assert len(fake.files_under(f"{ROOT}/output")) == 5
    assert len(fake.files_under(f"{ROOT}/archive")) == 5
    assert sorted(r["path"] for r in ledger_rows(config)) == sorted(masks)


def test_rate_limit_storm_still_processes_everything(fake: FakeDropbox, config: Path) -> None:
    masks = put_images(fake, [f"storm{n}.jpg" for n in range(4)])
    fake.rate_limit(None, retry_after=1, probability=0.3)
    result = run_once(fake, config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("processed 4: 4 succeeded"), result.stdout
    assert fake.faulted["rate_limit"] > 0
    assert_cut_out(fake, masks)
    assert fake.files_under(f"{ROOT}/input") == {}


def test_run_picks_up_a_new_upload_through_longpoll(fake: FakeDropbox, tmp_path: Path) -> None:
    """`cutoutd run` with a 60 s poll interval: only the longpoll can make this quick."""
    config = tmp_path / "longpoll.toml"
    config.write_text(
        f'[source]\nkind = "dropbox"\nroot = "{ROOT}"\npoll_interval = 60\n'
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.sqlite3"}"\n'
        '[dropbox]\nlongpoll_timeout = 30\n[log]\nformat = "json"\n'
    )
    env = {**os.environ, **fake.daemon_environment()}
    process = subprocess.Popen([CUTOUTD, "--config", str(config), "run"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and fake.counts.get("files/list_folder/longpoll", 0) == 0:
            time.sleep(0.05)
        assert fake.counts.get("files/list_folder/longpoll", 0) > 0, "daemon never longpolled"
        time.sleep(0.5)  # the first discovery pass (an empty input/) is over
        masks = put_images(fake, ["late arrival.jpg"])
        uploaded = time.monotonic()
        uploaded_at = datetime.now(UTC)
        output = output_of("late arrival.jpg")
        while time.monotonic() - uploaded < 20 and output not in fake.files_under(f"{ROOT}/output"):
            time.sleep(0.05)
        latency = time.monotonic() - uploaded
        assert output in fake.files_under(f"{ROOT}/output"), "not processed within 20 s"
        assert (
            alpha_iou(fake.files_under(f"{ROOT}/output")[output], masks["late arrival.jpg"]) >= 0.9
        )
        assert latency < 10
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    found = [datetime.fromisoformat(r["time"]) for r in map(json.loads, err.splitlines())
             if r["event"] == "discovery.changes"]  # fmt: skip
    pickup = (found[-1] - uploaded_at).total_seconds()
    print(f"upload -> discovered {pickup:.3f} s, upload -> output written {latency:.2f} s")
    assert 0 <= pickup < 2.0


def test_auth_dropbox_command_prints_a_refresh_token(fake: FakeDropbox) -> None:
    env = {**os.environ, **fake.sdk_environment(), "DROPBOX_APP_KEY": fake.app_key}
    env.pop("DROPBOX_APP_SECRET", None)
    process = subprocess.Popen([CUTOUTD, "auth", "dropbox"], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stderr is not None and process.stdin is not None
    url = ""
    while not url:
        line = process.stderr.readline()
        assert line, "the command ended without printing an authorization URL"
        if line.strip().startswith("https://"):
            url = line.strip()
    process.stdin.write(fake.approve(url) + "\n")
    process.stdin.flush()
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    lines = dict(
        line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#")
    )
    assert lines["DROPBOX_APP_KEY"] == fake.app_key
    token = lines["DROPBOX_REFRESH_TOKEN"]
    refreshed = fake.session().post(
        "https://api.dropboxapi.com/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": fake.app_key},
    )
    assert refreshed.status_code == 200, refreshed.text
    refreshed.close()


def test_run_once_names_the_moves_it_could_not_make(fake: FakeDropbox, tmp_path: Path) -> None:
    """Dropbox rate-limits every move for longer than `retry.rate_limit_wait`: the images
    are done, but their inputs cannot be archived; `--once` says which, and exits 75."""
    config = tmp_path / "moves.toml"
    config.write_text(
        f'[source]\nkind = "dropbox"\nroot = "{ROOT}"\npoll_interval = 0.5\nsettle_seconds = 0\n'
        f'[ledger]\nurl = "sqlite:///{tmp_path / "moves.sqlite3"}"\n'
        "[retry]\nbackoff_initial = 0.2\nrate_limit_wait = 1.5\n"
        "[dropbox]\ntimeout = 20\nmax_retries_on_error = 1\n"
        '[log]\nformat = "json"\nlevel = "INFO"\n'
    )
    masks = put_images(fake, ["stuck.jpg"])
    fake.rate_limit(None, retry_after=1, routes=["files/move_batch_v2", "files/move_v2"])
    result = run_once(fake, config)
    assert result.returncode == 75, result.stderr[-3000:]
    assert result.stdout.strip() == (
        "processed 1: 1 succeeded, 0 failed, 0 skipped; 0 still pending; "
        "1 inputs not moved yet: stuck.jpg -> archive/"
    )
    assert (
        alpha_iou(fake.files_under(f"{ROOT}/output")[output_of("stuck.jpg")], masks["stuck.jpg"])
        >= 0.9
    )
    assert f"{ROOT}/input/stuck.jpg" in fake.files_under(f"{ROOT}/input")

    fake.clear_faults()  # the next run finishes the move it owes
    again = run_once(fake, config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{ROOT}/archive/stuck.jpg" in fake.files_under(f"{ROOT}/archive")
    assert fake.files_under(f"{ROOT}/input") == {}
