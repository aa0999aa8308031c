"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright),
served by the real `cutoutd run` after it processed generated images with the real model.

Checks what a person would: the overview's counts, the before/after thumbnails loaded,
the failure listed with its reason, Retry refused without the token and done with it
(the ledger records `web:127.0.0.1`), the page fitting a phone, and no console errors.
A screenshot goes to test-artifacts/ (see docs/status-page.png for the committed one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Daemon, run_cutoutd, wait_for
from tests.helpers import write_shape

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("CUTOUTD_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
TOKEN = "page-token-5f1c9e2a7b"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (.ci/run installs it)"
)


@pytest.fixture
def daemon(tmp_path: Path, write_config: Callable[..., Path]) -> Iterator[tuple[Daemon, Path]]:
    root = tmp_path / "RemoveBGProcess"
    for n, color in enumerate([(200, 40, 40), (40, 160, 60), (30, 60, 200)]):
        write_shape(root / "input" / f"shoe{n}.jpg", size=(320, 240), color=color)
    (root / "input" / "broken.jpg").write_bytes(b"this is not a JPEG at all")
    config = write_config(
        root, '[http]\nport = 0\ntoken_credential = "CUTOUTD_WEB_TOKEN"\n[engine]\nworkers = 2\n'
    )
    running = Daemon(config, {"CUTOUTD_WEB_TOKEN": TOKEN}, tmp_path / "daemon.log")
    try:
        yield running, config
    finally:
        assert running.stop() == 0, running.log.read_text()[-3000:]
        assert TOKEN not in running.log.read_text()


def overview(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/api/overview", timeout=5)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def ledger_show(config: Path, path: str) -> list[dict[str, Any]]:
    shown = run_cutoutd("--config", str(config), "ledger", "show", path, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows: list[dict[str, Any]] = json.loads(shown.stdout)
    return rows


def test_status_page_in_chromium(daemon: tuple[Daemon, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    running, config = daemon
    url = running.url()
    wait_for(
        lambda: overview(url)["counts"]["today"] == {"succeeded": 3, "failed": 1, "skipped": 0},
        120,
        "three cutouts and one failure",
    )
    thumbs = tmp_path / "RemoveBGProcess" / ".cutoutd" / "thumbnails"
    wait_for(lambda: len(list(thumbs.glob("*.webp"))) == 6, 30, "six thumbnails")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            check_pages(browser, url, config)
            check_live_updates(browser, url, tmp_path / "RemoveBGProcess")
        finally:
            browser.close()


def check_pages(browser: Any, url: str, config: Path) -> None:
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(url + "/")
    assert page.text_content('[data-count="today.succeeded"]') == "3"
    assert page.text_content('[data-count="today.failed"]') == "1"
    assert page.text_content('[data-count="all.succeeded"]') == "3"
    assert page.text_content('[data-queue="pending"]') == "0"
    page.wait_for_selector("#chart canvas")
    page.wait_for_function(
        "[...document.querySelectorAll('.grid img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    sizes = page.eval_on_selector_all(
        ".grid img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) == 6 and all(w > 0 and h > 0 for w, h in sizes), sizes
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

    page.goto(url + "/failures")
    row = page.locator("table.failures tbody tr", has_text="broken.jpg")
    assert "not an image" in row.locator(".reason").text_content()

    # the same click without the token: refused, nothing changes
    with page.expect_response(lambda r: "/retry" in r.url) as refused:
        row.get_by_role("button", name="Retry").click()
    assert refused.value.status == 403
    assert "sign in" in page.text_content("main").lower()
    assert ledger_show(config, "broken.jpg")[-1]["status"] == "failed"
    errors = [e for e in errors if "403" not in e]  # the refusal itself is the one expected

    # sign in once; the cookie is HttpOnly and SameSite=Strict; Retry requeues
    page.goto(url + "/failures")
    page.fill('input[name="token"]', TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("text=Sign out")
    [cookie] = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    row = page.locator("table.failures tbody tr", has_text="broken.jpg")
    row.get_by_role("button", name="Retry").click()
    page.wait_for_url("**/items/*")
    assert "retry_requested" in page.text_content("table.events")
    events = [e for e in ledger_show(config, "broken.jpg")[-1]["events"]]
    requested = [e for e in events if e["event"] == "retry_requested"]
    assert requested and requested[0]["actor"] == "web:127.0.0.1", events

    # the one-image page of a success: before and after, loaded
    page.goto(url + "/results")
    page.locator(".grid a.card").first.click()
    page.wait_for_function(
        "[...document.querySelectorAll('.pair img')].length == 2 && "
        "[...document.querySelectorAll('.pair img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    outputs = page.locator(".output").all_text_contents()
    assert len(outputs) == 1 and re.fullmatch(r"output/shoe\d\.png \([\d,]+ bytes\)", outputs[0])

    # a phone: no sideways scrolling on the overview
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    mobile = phone.new_page()
    mobile.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    mobile.goto(url + "/")
    wide = mobile.evaluate(
        """() => [...document.querySelectorAll('body *')]
            .filter(e => e.scrollWidth > 390 || e.getBoundingClientRect().right > 390)
            .filter(e => !e.closest('.table-wrap') || e.classList.contains('table-wrap'))
            .map(e => `${e.tagName}.${e.className} ${e.scrollWidth}`)"""
    )
    assert mobile.evaluate("document.documentElement.scrollWidth") <= 390, wide
    mobile.screenshot(path=str(ARTIFACTS / "status-page-phone.png"), full_page=True)
    assert errors == []


def check_live_updates(browser: Any, url: str, root: Path) -> None:
    """An open overview follows the daemon without a reload: a new image's count and its
    thumbnails appear by themselves, and so does a new failure in the latest failures."""
    errors: list[str] = []
    page = browser.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    page.evaluate("window.loadedOnce = true")  # gone if the page reloaded
    before = int(page.text_content('[data-count="today.succeeded"]'))
    write_shape(root / "input" / "late.jpg", size=(320, 240), color=(200, 170, 20))
    wait_for(
        lambda: page.text_content('[data-count="today.succeeded"]') == str(before + 1),
        60,
        "the open page to count the new image",
    )
    page.wait_for_selector('.grid .caption:text("late.jpg")', timeout=30_000)
    (root / "input" / "late-broken.jpg").write_bytes(b"not a picture either")
    page.wait_for_selector('#latest-failures a:text("late-broken.jpg")', timeout=60_000)
    assert page.evaluate("window.loadedOnce") is True
    assert errors == []
