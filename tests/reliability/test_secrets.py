"""Secrets (issue 7, item 4): whole scenarios at DEBUG level, and not one secret value in the
logs (stderr), the ledger (every row of every table of the SQLite file), the output of the
CLI commands, the metrics or the status page.

The secrets: the credential variables (`DROPBOX_APP_SECRET`, `DROPBOX_REFRESH_TOKEN`,
`CLIENT_SECRET`, all distinctive values), every access and refresh token the fakes issued,
the token of every Dropbox temporary link, the signature (query string) of every Adobe
result URL, and the OAuth code typed into `cutoutd auth dropbox`.

The scenario makes the vendors hand secrets back, as real ones may: Adobe echoes the input
URL (a Dropbox temporary link) in a rejection, a result URL is unreachable for a moment (so
that `requests`' error names its path and signed query), Dropbox access tokens expire
mid-run and are refreshed, Adobe rejects a token once and rate-limits once. Then the ledger
commands, `retry` and a second `run --once`, and `auth dropbox`.

Also: the ledger file (and its folder) are private (0600, 0700), and the metrics listen on
loopback unless told otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import CUTOUTD, run_cutoutd
from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakeError, FakeJob, FakePhotoshop
from tests.reliability.harness import (
    PERIOD,
    ROOT,
    Daemon,
    Figures,
    dropbox_sections,
    dump_ledger,
    environment,
    fake_secrets,
    leaks,
    ledger_rows,
    listening_address,
    merge,
    put_shots,
    report,
    shots,
    wait_until,
    write_config,
)

REJECTED = "rejected by adobe.jpg"  # Adobe's rejection of it quotes its temporary link


class LeakyPhotoshop(FakePhotoshop):
    """The Photoshop fake, handing secrets back the way a vendor may: its rejection of
    `REJECTED` quotes the input URL, and the first result URL it gives points at a port
    that refuses connections (the daemon's download fails; `requests` names the URL's path
    and signed query in its error)."""

    dead_port = 0
    unreachable_results = 1
    echoed: list[str]

    def _fetch_and_check(self, source_url: str) -> bytes:
        if source_url.endswith(REJECTED.replace(" ", "%20")):
            self.echoed.append(source_url)
            message = f"image.source.url: {source_url} could not be fetched (HTTP 403)"
            raise FakeError(400, {"error_code": "validation_error", "message": message})
        return super()._fetch_and_check(source_url)

    def _status_body(self, job: FakeJob) -> dict[str, Any]:
        body = super()._status_body(job)
        if job.status == "succeeded" and self.unreachable_results > 0:
            self.unreachable_results -= 1
            destination = body["result"]["outputs"][0]["destination"]
            destination["url"] = destination["url"].replace(
                self.url, f"http://127.0.0.1:{self.dead_port}"
            )
        return body


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def secret_dropbox() -> Iterator[FakeDropbox]:
    with FakeDropbox(https=True, app_secret=f"DBXAPPSECRET{secrets.token_hex(12)}") as server:
        yield server


@pytest.fixture
def leaky_adobe(secret_dropbox: FakeDropbox) -> Iterator[LeakyPhotoshop]:
    fake = LeakyPhotoshop(
        client_secret=f"ADOBECLIENTSECRET{secrets.token_hex(12)}",
        submit_limit=3,
        submit_period=PERIOD,
        latency=(0.05, 0.2),
        verify=secret_dropbox.ca_path or True,
    )
    fake.dead_port, fake.echoed = _closed_port(), []
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def _expire_dropbox_tokens_once(dropbox: FakeDropbox) -> None:
    """After the first temporary link, every Dropbox access token expires: the SDK
    refreshes (a new token the daemon must register for redaction)."""
    fired: list[bool] = []

    def hook(route: str, arg: Any) -> None:
        if route == "files/get_temporary_link" and not fired:
            fired.append(True)
            dropbox.expire_access_tokens()

    dropbox.hooks.append(hook)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _auth_dropbox(env: dict[str, str], dropbox: FakeDropbox) -> tuple[str, str, str]:
    """`cutoutd auth dropbox`, answering its prompt: (stdout, stderr, the code typed)."""
    process = subprocess.Popen(
        [CUTOUTD, "auth", "dropbox"], env={**os.environ, **env}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    seen, url = [], ""
    while not url:
        line = process.stderr.readline()
        assert line, f"no authorization URL in: {''.join(seen)}"
        seen.append(line)
        url = line.strip() if line.strip().startswith("https://") else ""
    code = dropbox.approve(url)
    out, err = process.communicate(code + "\n", timeout=60)
    assert process.returncode == 0, err
    return out, "".join(seen) + err, code


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_secret_in_logs_ledger_cli_output_or_metrics(
    secret_dropbox: FakeDropbox, leaky_adobe: LeakyPhotoshop, tmp_path: Path
) -> None:
    dropbox, adobe = secret_dropbox, leaky_adobe
    batch = shots(4, prefix="secret")
    put_shots(dropbox, batch)
    dropbox.put_file(f"{ROOT}/input/{REJECTED}", shots(1, prefix="x", seed=7)[0].data)
    dropbox.put_file(f"{ROOT}/input/truncated.jpg", batch[0].data[:300])
    _expire_dropbox_tokens_once(dropbox)
    adobe.reject_next_calls(1)  # a 401 on the first API call: a second IMS token
    adobe.force_rate_limit(1, retry_after=0.2)

    ledger = tmp_path / "state" / "cutoutd" / "ledger.sqlite3"  # its folder is new too
    sections = merge(dropbox_sections(ledger, adobe), {
        "log": {"level": "DEBUG"},
        "http": {"port": 0},  # no address: the default
        "retry": {"max_attempts": 3},
    })  # fmt: skip
    config = write_config(tmp_path / "cutoutd.toml", sections)
    env = environment(dropbox, adobe)
    assert {"DROPBOX_APP_SECRET", "DROPBOX_REFRESH_TOKEN", "CLIENT_SECRET"} <= set(env)
    texts: dict[str, str] = {}

    started = time.monotonic()
    daemon = Daemon(config, env, tmp_path / "logs").start()
    try:
        wait_until(lambda: _all_ended(ledger, 6), 60, daemon=daemon, what="six revisions to end")
        [port] = [e["port"] for e in daemon.events() if e.get("event") == "http.listening"]
        bound = listening_address(port)
        texts["GET /metrics"] = _get(f"http://127.0.0.1:{port}/metrics")[1]
        for page in ("/", "/results", "/failures?status=any", "/api/overview"):
            texts[f"GET {page}"] = _get(f"http://127.0.0.1:{port}{page}")[1]
        for item_id in range(1, 7):  # every revision's own page: events, reasons, outputs
            texts[f"GET /items/{item_id}"] = _get(f"http://127.0.0.1:{port}/items/{item_id}")[1]
        health = _get(f"http://127.0.0.1:{port}/healthz")
        texts["GET /healthz"] = health[1]
        private = {p.name: _mode(p) for p in ledger.parent.glob("ledger.sqlite3*")}
    finally:
        assert daemon.stop() == 0, daemon.stderr()[-3000:]
    texts["run (stderr)"] = daemon.stderr()

    commands = [
        ("ledger", "list", "--format", "json"),
        ("ledger", "list", "--format", "csv"),
        ("ledger", "list", "--format", "table"),
        ("ledger", "show", REJECTED, "--format", "json"),
        ("ledger", "show", REJECTED, "--format", "table"),
        ("ledger", "show", "secret 000.jpg", "--format", "csv"),
        ("ledger", "stats", "--format", "json"),
        ("ledger", "export"),
        ("ledger", "export", "--events", "--format", "csv"),
        ("retry", "--status", "failed", "--format", "json"),
        ("run", "--once"),
        ("check",),
    ]
    for command in commands:
        result = run_cutoutd("--config", str(config), *command, env=env, timeout=120)
        name = " ".join(command)
        assert result.returncode in (0, 1), f"{name}: {result.stderr[-2000:]}"
        texts[f"{name} (stdout)"], texts[f"{name} (stderr)"] = result.stdout, result.stderr
    auth_out, auth_err, code = _auth_dropbox(env, dropbox)
    texts["ledger (every table)"] = dump_ledger(ledger)

    values = fake_secrets(dropbox, adobe, env)
    values["OAuth code typed into auth dropbox"] = code
    product = _auth_product(auth_out, values)
    texts["auth dropbox (stdout, but its KEY=value lines)"] = product["rest"]
    texts["auth dropbox (stderr)"] = auth_err
    found = {where: leaks(text, values) for where, text in texts.items()}
    found = {where: labels for where, labels in found.items() if labels}

    rows = ledger_rows(ledger)
    debug_lines = sum(1 for e in daemon.events() if e.get("level") == "DEBUG")
    figures = Figures("secrets", len(rows), seconds=round(time.monotonic() - started, 1))
    figures.extra.update(
        secrets_checked=len(values),
        kinds={kind: sum(1 for label in values if label.startswith(kind)) for kind in (
            "dropbox access token", "dropbox refresh token", "dropbox temporary link",
            "adobe access token", "adobe result URL signature")},
        places_checked=len(texts),
        bytes_checked=sum(len(text) for text in texts.values()),
        debug_log_lines=debug_lines,
        leaks=found,
        ledger_modes={name: oct(mode) for name, mode in private.items()},
        ledger_folder_mode=oct(_mode(ledger.parent)),
        metrics_bound_to=bound,
    )  # fmt: skip
    report(figures)

    # the scenario did what it says
    assert debug_lines > 0
    assert len(adobe.echoed) >= 1 and adobe.unreachable_results == 0
    assert len(dropbox.access_tokens) >= 2 and len(adobe.access_tokens) >= 2
    assert "retry_scheduled" in texts["ledger export --events --format csv (stdout)"]
    assert health == (200, "ok\n")
    assert {"DROPBOX_APP_KEY", "DROPBOX_REFRESH_TOKEN", "DROPBOX_APP_SECRET"} == set(
        product["lines"]
    )
    assert product["lines"]["DROPBOX_REFRESH_TOKEN"] in dropbox.refresh_tokens
    # ... and no secret came out anywhere
    assert not found, json.dumps(found, indent=2)
    assert not any("Bearer " in text for text in texts.values())
    # private ledger, loopback metrics
    assert private["ledger.sqlite3"] == 0o600, private
    assert all(mode & 0o077 == 0 for mode in private.values()), private
    assert _mode(ledger.parent) & 0o077 == 0, oct(_mode(ledger.parent))
    assert bound == "127.0.0.1"


def _all_ended(ledger: Path, count: int) -> bool:
    rows = ledger_rows(ledger)
    return len(rows) == count and all(
        r["status"] in ("succeeded", "failed", "skipped") and not r["relocate_to"] for r in rows
    )


def _auth_product(stdout: str, values: dict[str, str]) -> dict[str, Any]:
    """`auth dropbox` prints credentials on purpose: its `KEY=value` lines (the new refresh
    token, and the app secret it was given) are its product. The rest must hold none."""
    lines = dict(
        line.split("=", 1) for line in stdout.splitlines() if "=" in line and line[:1] != "#"
    )
    rest = "\n".join(line for line in stdout.splitlines() if line.split("=", 1)[0] not in lines)
    return {"lines": lines, "rest": rest}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # requests names a signed URL's path and query, without scheme, in its errors
            "Max retries exceeded with url: /results/FJ3uvF9OgvK1owcdd4J-Cg?sig=670e9194 (Caused",
            "Max retries exceeded with url: /results/<redacted>?<redacted> (Caused",
        ),
        (  # a Dropbox temporary link carries its secret in its path
            "https://uc7d.dl.dropboxusercontent.com/cd/0/get/CSxyzAbc123_DEFghi456-JKLm/a%20b.jpg",
            "https://uc7d.dl.dropboxusercontent.com/cd/0/get/<redacted>/a%20b.jpg",
        ),
        (
            "from http://127.0.0.1:5/results/FJ3uvF9OgvK1owcdd4J-Cg?sig=670e9194 failed",
            "from http://127.0.0.1:5/results/<redacted>?<redacted> failed",
        ),
        (  # job ids (URNs, UUIDs), names, paths and plain questions stay
            "GET https://image.adobe.io/v2/status/8d25eb96-1111-2222-3333-444455556666: 404",
            "GET https://image.adobe.io/v2/status/8d25eb96-1111-2222-3333-444455556666: 404",
        ),
        (
            "moved /input/IMG_20240101_123456789.jpg; is it /ok? yes",
            "moved /input/IMG_20240101_123456789.jpg; is it /ok? yes",
        ),
    ],
)
def test_redact_scrubs_signed_paths_and_link_tokens(text: str, expected: str) -> None:
    from daemon.secrets import redact

    assert redact(text) == expected
    assert redact(redact(text)) == expected  # log records pass through it twice
