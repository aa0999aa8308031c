"""The real `cutoutd` command with the Photoshop engine: the HTTPS Dropbox fake is the source
(recipe B, see tests/e2e/test_dropbox_e2e.py) and the Photoshop fake is Adobe. The Photoshop
fake fetches each input from its Dropbox temporary link, so the outputs are real cutouts.

Time is scaled down for CI, consistently on both sides: Adobe's 2 (soft) / 3 (hard)
submissions per 3 s become 2 / 3 per 0.3 s (engine `submit_period` and the fake's window),
job latency 0.05-0.3 s instead of seconds, and status polls start at 0.1 s.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.e2e.conftest import CUTOUTD, Daemon, run_cutoutd, wait_for
from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakePhotoshop
from tests.helpers import alpha_iou, encode, shape_image

ROOT = "/RemoveBGProcess"
PERIOD = 0.3  # Adobe's 3 s window, scaled by 0.1 on both sides
IMAGES = 50


@pytest.fixture
def dropbox() -> Iterator[FakeDropbox]:
    with FakeDropbox(https=True) as server:
        yield server


@pytest.fixture
def adobe(dropbox: FakeDropbox) -> Iterator[FakePhotoshop]:
    fake = FakePhotoshop(
        submit_limit=3, submit_period=PERIOD, latency=(0.05, 0.3), verify=dropbox.ca_path or True
    )
    with fake:
        yield fake


@pytest.fixture
def config(tmp_path: Path, adobe: FakePhotoshop) -> Path:
    path = tmp_path / "cutoutd.toml"
    path.write_text(
        f'[source]\nkind = "dropbox"\nroot = "{ROOT}"\npoll_interval = 0.5\nsettle_seconds = 0\n'
        '[engine]\nkind = "photoshop"\n'
        f'[ledger]\nurl = "sqlite:///{ledger_file(tmp_path)}"\n'
        "[retry]\nbackoff_initial = 0.2\nbackoff_multiplier = 1\nmax_attempts = 5\n"
        "[dropbox]\ntimeout = 20\nmax_retries_on_error = 1\nmax_retries_on_rate_limit = 3\n"
        f'[photoshop]\napi_url = "{adobe.url}"\nims_url = "{adobe.ims_url}"\n'
        f"submit_limit = 2\nsubmit_period = {PERIOD}\nmax_in_flight = 20\n"
        "poll_initial = 0.1\npoll_multiplier = 1.5\npoll_max = 0.5\njob_timeout = 60\n"
        '[log]\nformat = "json"\nlevel = "INFO"\n[http]\nport = 0\n'
    )
    return path


def ledger_file(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def environment(dropbox: FakeDropbox, adobe: FakePhotoshop) -> dict[str, str]:
    return {**dropbox.daemon_environment(), **adobe.daemon_environment()}


def put_images(dropbox: FakeDropbox, count: int) -> dict[str, np.ndarray]:
    """`count` distinct shapes on flat backgrounds (distinct bytes: no dedupe skips)."""
    masks = {}
    for n in range(count):
        color = (30 + (n * 37) % 120, 40 + (n * 53) % 100, 200 - (n * 29) % 150)
        offset = (n % 7) * 0.02
        image, mask = shape_image(
            (200, 150),
            shape="ellipse" if n % 2 else "rectangle",
            color=color,
            box=(0.2 + offset, 0.2, 0.7 + offset, 0.8 - (n % 5) * 0.03),
        )
        name = f"shot {n:02d}.jpg"
        dropbox.put_file(f"{ROOT}/input/{name}", encode(image, "JPEG", quality=95))
        masks[name] = mask
    return masks


def output_of(name: str) -> str:
    return f"{ROOT}/output/{name.rsplit('.', 1)[0]}.png"


def ledger_rows(config: Path) -> list[dict[str, Any]]:
    listing = run_cutoutd("--config", str(config), "ledger", "list", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    rows: list[dict[str, Any]] = json.loads(listing.stdout)
    return rows


def assert_cut_out(dropbox: FakeDropbox, masks: dict[str, np.ndarray]) -> None:
    outputs = dropbox.files_under(f"{ROOT}/output")
    archived = dropbox.files_under(f"{ROOT}/archive")
    for name, mask in masks.items():
        assert alpha_iou(outputs[output_of(name)], mask) >= 0.9, name
        assert f"{ROOT}/archive/{name}" in archived, name
    assert dropbox.files_under(f"{ROOT}/input") == {}


def test_run_once_submits_each_image_once_within_the_rate_limit(
    dropbox: FakeDropbox, adobe: FakePhotoshop, config: Path
) -> None:
    masks = put_images(dropbox, IMAGES)
    result = run_cutoutd(
        "--config", str(config), "run", "--once", env=environment(dropbox, adobe), timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        f"processed {IMAGES}: {IMAGES} succeeded, 0 failed, 0 skipped; 0 still pending"
    )
    assert adobe.submissions_by_name() == Counter(dict.fromkeys(masks, 1))
    assert adobe.submissions == IMAGES
    assert adobe.rate_limited == 0  # the engine's limiter (2 per period) keeps under 3
    assert_cut_out(dropbox, masks)
    rows = ledger_rows(config)
    assert sorted(row["path"] for row in rows) == sorted(masks)
    assert {row["status"] for row in rows} == {"succeeded"}
    with adobe.lock:
        assert {row["job_id"] for row in rows} == set(adobe.jobs)
    for secret in (dropbox.refresh_token, adobe.client_secret, *dropbox.access_tokens):
        assert secret not in result.stderr


def wait_for_job_ids(ledger: Path, count: int, process: subprocess.Popen[bytes]) -> list[str]:
    """Poll the daemon's SQLite ledger (read-only) until `count` rows have a job id."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "cutoutd run exited early"
        if ledger.exists():
            with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as connection:
                try:
                    found = connection.execute(
                        "SELECT job_id FROM items WHERE job_id IS NOT NULL"
                    ).fetchall()
                except sqlite3.OperationalError:  # the schema is not there yet
                    found = []
            connection.close()
            if len(found) >= count:
                return [row[0] for row in found]
        time.sleep(0.1)
    raise AssertionError("no job ids reached the ledger")


def test_restart_resumes_in_flight_jobs_without_resubmitting(
    dropbox: FakeDropbox, adobe: FakePhotoshop, config: Path, tmp_path: Path
) -> None:
    masks = put_images(dropbox, 3)
    adobe.latency = 3600.0  # the jobs stay running while the daemon is killed
    env = {**os.environ, **environment(dropbox, adobe)}
    log = (tmp_path / "first-run.log").open("wb")
    daemon = subprocess.Popen(
        [CUTOUTD, "--config", str(config), "run"], stdout=subprocess.DEVNULL, stderr=log, env=env
    )
    try:
        job_ids = wait_for_job_ids(ledger_file(tmp_path), len(masks), daemon)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        log.close()
    assert dropbox.files_under(f"{ROOT}/output") == {}
    with adobe.lock:
        assert {job.status for job in adobe.jobs.values()} <= {"pending", "running"}
        for job in adobe.jobs.values():
            job.latency = 0.0  # the jobs finish while no daemon runs

    result = run_cutoutd(
        "--config", str(config), "run", "--once", env=environment(dropbox, adobe), timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("processed 3: 3 succeeded"), result.stdout
    assert result.stderr.count('"cutout.resumed"') == len(masks)
    assert adobe.submissions_by_name() == Counter(dict.fromkeys(masks, 1))
    assert adobe.submissions == len(masks)
    assert_cut_out(dropbox, masks)
    rows = ledger_rows(config)
    assert {row["status"] for row in rows} == {"succeeded"}
    assert sorted(row["job_id"] for row in rows) == sorted(job_ids)


PROFILE = """
[[profile]]
name = "amazon"
match = ["*.jpg"]
[[profile.output]]
format = "jpeg"
canvas = "1000x1000"
fill = 0.85
[[profile.output]]
format = "webp"
trim = true
padding = "5%"
folder = "web"
[[profile.output]]
mode = "mask"
folder = "masks"
"""


def test_profile_outputs_come_from_one_adobe_submission_per_image(
    dropbox: FakeDropbox, adobe: FakePhotoshop, config: Path
) -> None:
    config.write_text(config.read_text() + PROFILE)
    masks = put_images(dropbox, 6)
    result = run_cutoutd(
        "--config", str(config), "run", "--once", env=environment(dropbox, adobe), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("processed 6: 6 succeeded"), result.stdout
    assert adobe.submissions_by_name() == Counter({name: 1 for name in masks})
    outputs = dropbox.files_under(f"{ROOT}/output")
    for name, mask in masks.items():
        stem = name.rsplit(".", 1)[0]
        jpeg = Image.open(io.BytesIO(outputs[f"{ROOT}/output/{stem}.jpg"]))
        assert (jpeg.format, jpeg.size) == ("JPEG", (1000, 1000))
        webp = outputs[f"{ROOT}/output/web/{stem}.webp"]
        assert Image.open(io.BytesIO(webp)).format == "WEBP"
        found = np.asarray(Image.open(io.BytesIO(outputs[f"{ROOT}/output/masks/{stem}.png"])))
        truth = mask
        assert (
            np.logical_and(found > 127, truth).sum() / np.logical_or(found > 127, truth).sum()
            >= 0.9
        )
    assert len(outputs) == 3 * len(masks)
    with sqlite3.connect(ledger_file(config.parent)) as db:
        written = db.execute("SELECT count(*) FROM outputs WHERE written_at IS NOT NULL").fetchone()
    assert written == (3 * len(masks),)


def test_a_premium_folder_goes_to_adobe_and_the_rest_to_the_local_model(
    dropbox: FakeDropbox, adobe: FakePhotoshop, config: Path
) -> None:
    text = config.read_text().replace('kind = "photoshop"', 'kind = "local"\nworkers = 1')
    text = text.replace("settle_seconds = 0\n", "settle_seconds = 0\nrecursive = true\n")
    config.write_text(
        text + '[[profile]]\nname = "premium"\nmatch = ["premium/**"]\nengine = "photoshop"\n'
        '[[profile.output]]\nformat = "webp"\ntrim = true\n'
    )
    masks = put_images(dropbox, 4)
    for name in list(masks)[:2]:
        data = dropbox.files_under(f"{ROOT}/input")[f"{ROOT}/input/{name}"]
        dropbox.delete(f"{ROOT}/input/{name}")
        dropbox.put_file(f"{ROOT}/input/premium/{name}", data)
    result = run_cutoutd(
        "--config", str(config), "run", "--once", env=environment(dropbox, adobe), timeout=120
    )
    assert result.returncode == 0, result.stderr
    premium, rest = list(masks)[:2], list(masks)[2:]
    assert adobe.submissions_by_name() == Counter({name: 1 for name in premium})
    outputs = dropbox.files_under(f"{ROOT}/output")
    for name in premium:
        assert f"{ROOT}/output/premium/{name.rsplit('.', 1)[0]}.webp" in outputs
    for name in rest:
        assert alpha_iou(outputs[output_of(name)], masks[name]) >= 0.9
    engines = {row["path"]: row["engine"] for row in ledger_rows(config)}
    assert engines == {
        **{f"premium/{name}": "photoshop" for name in premium},
        **{name: "local" for name in rest},
    }


def test_photoshop_images_get_a_before_thumbnail_from_dropbox_once(
    dropbox: FakeDropbox, adobe: FakePhotoshop, config: Path, tmp_path: Path
) -> None:
    """cutoutd never holds a Photoshop input's bytes: the "before" picture is Dropbox's own
    thumbnail of that revision, asked once when the outputs are written. The page serves
    it from the state directory; loading the page asks Dropbox nothing."""
    images = {}
    for name, color in (("red.jpg", (200, 40, 40)), ("green.jpg", (40, 160, 60))):
        image, _ = shape_image((400, 300), shape="ellipse", color=color)
        images[name] = image
        dropbox.put_file(f"{ROOT}/input/{name}", encode(image, "JPEG", quality=95))
    running = Daemon(config, environment(dropbox, adobe), tmp_path / "daemon.log")
    try:
        url = running.url()

        def succeeded() -> bool:
            overview = requests.get(f"{url}/api/overview", timeout=5).json()
            return bool(overview["counts"]["all"]["succeeded"] == len(images))

        wait_for(succeeded, 120, "both Photoshop cutouts")
        asked = dropbox.counts["files/get_thumbnail_v2"]
        rows = {row["path"]: row["id"] for row in ledger_rows(config)}
        for name, image in images.items():
            reply = requests.get(f"{url}/thumbs/{rows[name]}-before.webp", timeout=5)
            assert reply.status_code == 200 and reply.headers["Content-Type"] == "image/webp"
            before = Image.open(io.BytesIO(reply.content))
            assert before.format == "WEBP" and max(before.size) <= 256 and before.size[0] > 100
            expected = np.asarray(image.convert("RGB").resize(before.size), dtype=float)
            difference = np.abs(np.asarray(before.convert("RGB"), dtype=float) - expected)
            assert difference.mean() < 8, name  # the input itself, not the cutout
            after = requests.get(f"{url}/thumbs/{rows[name]}-after.webp", timeout=5)
            assert after.status_code == 200 and Image.open(io.BytesIO(after.content)).mode == "RGBA"
        page = requests.get(f"{url}/", timeout=5).text
        assert page.count('class="before"') == len(images)
        assert "no picture of the input" not in page
        assert asked == len(images)  # once per image, when its outputs were written
        assert dropbox.counts["files/get_thumbnail_v2"] == asked  # the page asked nothing
    finally:
        assert running.stop() == 0, running.log.read_text()[-3000:]
    assert all(secret not in running.log.read_text() for secret in dropbox.access_tokens)
