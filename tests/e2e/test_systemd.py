"""The systemd side: both unit files verified and scored by systemd-analyze, and the real
`cutoutd run` process speaking sd_notify to a socket the test listens on, serving metrics,
and draining on SIGTERM within the unit's TimeoutStopSec."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import ServiceSettings
from daemon.errors import EX_CONFIG
from daemon.secrets import read_secret
from tests.e2e.conftest import CUTOUTD
from tests.helpers import write_shape

UNITS = Path(__file__).resolve().parents[2] / "systemd"
UNIT = UNITS / "cutoutd.service"
TEMPLATE = UNITS / "cutoutd@.service"
EXEC_PATH = "/opt/cutoutd/venv/bin/cutoutd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze missing (.ci/run installs systemd)"
)
WriteConfig = Callable[..., Path]


def directives(unit: Path) -> list[tuple[str, str]]:
    """(key, value) for every setting, in order; repeated keys stay repeated."""
    pairs = []
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def setting(unit: Path, key: str) -> str:
    [value] = [v for k, v in directives(unit) if k == key]
    return value


def seconds(value: str) -> float:
    """systemd time spans as these units use them: `60s`, `5min`."""
    match = re.fullmatch(r"(\d+)(s|min)", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


# -- the unit files -------------------------------------------------------------------------


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze --root`: the unit files as shipped, byte for byte, and
    an executable where ExecStart= expects the installed command."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (UNIT, TEMPLATE):
        shutil.copyfile(unit, root / "etc/systemd/system" / unit.name)
    command = root / EXEC_PATH.lstrip("/")
    command.parent.mkdir(parents=True)
    command.write_text(f'#!/bin/sh\nexec {CUTOUTD} "$@"\n')
    command.chmod(0o755)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--recursive-errors=no", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_systemd_analyze
def test_both_units_verify_without_a_warning(unit_root: Path) -> None:
    result = verify(unit_root, "cutoutd.service", "cutoutd@e2e.service")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@needs_systemd_analyze
def test_verify_catches_mistakes(unit_root: Path) -> None:
    """The check above is not a no-op: a misspelt key or a missing command fails it."""
    unit = unit_root / "etc/systemd/system/cutoutd.service"
    unit.write_text(unit.read_text().replace("ProtectHome=", "ProtectHomes="))
    (unit_root / EXEC_PATH.lstrip("/")).unlink()
    result = verify(unit_root, "cutoutd.service")
    assert result.returncode != 0
    assert "Unknown key 'ProtectHomes'" in result.stderr
    assert "is not executable" in result.stderr


def exposure(*args: str) -> float:
    assert SYSTEMD_ANALYZE
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    return float(match[1])


@needs_systemd_analyze
def test_security_exposure_is_at_most_2(unit_root: Path) -> None:
    assert exposure(str(UNIT)) <= 2.0
    assert exposure(f"--root={unit_root}", "cutoutd@e2e.service") <= 2.0


def test_units_keep_the_promises_made_elsewhere() -> None:
    for unit in (UNIT, TEMPLATE):
        assert setting(unit, "Type") == "notify"
        assert setting(unit, "Restart") == "on-failure"
        assert str(EX_CONFIG) in setting(unit, "RestartPreventExitStatus").split()
        assert seconds(setting(unit, "TimeoutStopSec")) >= 2 * ServiceSettings().drain_timeout
        assert seconds(setting(unit, "WatchdogSec")) >= 60
        assert setting(unit, "ExecStart").startswith(f"{EXEC_PATH} --config /etc/cutoutd/")
        assert "SystemCallFilter=@system-service" in unit.read_text()
        loaded = {v.split(":")[0] for k, v in directives(unit) if k == "LoadCredential"}
        defaults = {v.split(":")[0] for k, v in directives(unit) if k == "SetCredential"}
        names = {"DROPBOX_APP_KEY", "DROPBOX_APP_SECRET", "DROPBOX_REFRESH_TOKEN"}
        assert names | {"CLIENT_ID", "CLIENT_SECRET"} <= loaded == defaults  # all optional


def test_every_setting_carries_a_comment() -> None:
    for unit in (UNIT, TEMPLATE):
        lines = unit.read_text().splitlines()
        for number, line in enumerate(lines):
            if line and not line.startswith(("#", "[")):
                assert lines[number - 1].startswith("#"), f"{unit.name}:{number + 1}: {line}"


def test_an_empty_default_credential_reads_as_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SetCredential=NAME:\\n` is the unit's default for a missing credential file."""
    (tmp_path / "DROPBOX_APP_KEY").write_text("\n")
    (tmp_path / "CLIENT_ID").write_text("client-id-123\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("DROPBOX_APP_KEY", raising=False)
    monkeypatch.delenv("CLIENT_ID", raising=False)
    assert read_secret("DROPBOX_APP_KEY") is None
    assert read_secret("CLIENT_ID") == "client-id-123"


# -- the real process under a fake service manager -------------------------------------------


Message = dict[str, str]


class ServiceManager:
    """The notify side of systemd: a datagram socket, and what arrived when."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.messages: list[tuple[float, Message]] = []
        self.cursor = 0  # messages before this one were matched by an earlier wait
        self.process: subprocess.Popen[bytes] | None = None  # fail fast when it exits

    def next(self, where: Callable[[Message], bool], what: str, timeout: float) -> Message:
        """The next message, in arrival order, that matches `where`."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self.cursor, len(self.messages)):
                if where(self.messages[index][1]):
                    self.cursor = index + 1
                    return self.messages[index][1]
            self.cursor = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {self.messages}")
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode} before {what}")
            self.socket.settimeout(min(left, 0.5))
            try:
                data = self.socket.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(
                (time.monotonic(), dict(x.split("=", 1) for x in data.split("\n")))
            )

    def status(self, pattern: str, timeout: float) -> Message:
        return self.next(
            lambda m: bool(re.search(pattern, m.get("STATUS", ""))), f"STATUS ~ {pattern}", timeout
        )


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ServiceManager]:
    server = ServiceManager(tmp_path / "notify.sock")
    yield server
    server.socket.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def scrape(port: int) -> dict[str, float]:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_notify_watchdog_metrics_and_drain_with_the_real_process(
    tmp_path: Path, write_config: WriteConfig, manager: ServiceManager
) -> None:
    root = tmp_path / "RemoveBGProcess"
    for n in range(6):
        write_shape(root / "input" / f"img{n}.jpg", size=(480, 360), color=(30 * n, 90, 200))
    port = free_port()
    config = write_config(root, f"[metrics]\nenabled = true\nport = {port}\n")
    watchdog = 4.0
    env = {**os.environ, "NOTIFY_SOCKET": str(manager.path)}
    env["WATCHDOG_USEC"] = str(int(watchdog * 1_000_000))
    stderr = (tmp_path / "stderr.log").open("w")
    process = subprocess.Popen(
        [CUTOUTD, "--config", str(config), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    manager.process = process
    try:
        assert manager.next(lambda m: "READY" in m, "READY=1", timeout=120) == {
            "READY": "1",
            "STATUS": f"running on local folder {root}",
        }
        ready_at = time.monotonic()
        summary = r"\d+ done, \d+ in flight, 0 failed, \d+ pending, last poll \d+ s ago"
        assert manager.status(f"^{summary}$", timeout=watchdog)["WATCHDOG"] == "1"
        manager.status(r"^[1-9]\d* done", timeout=120)

        samples = scrape(port)
        assert samples['cutoutd_images_total{"outcome": "succeeded"}'] >= 1
        assert samples['cutoutd_engine_latency_seconds_count{"engine": "local"}'] >= 1
        assert samples["cutoutd_last_successful_poll_timestamp_seconds{}"] > time.time() - 60
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")

        pings = [at for at, m in manager.messages if m.get("WATCHDOG") == "1"]
        gaps = [b - a for a, b in zip([ready_at, *pings], pings, strict=False)]
        assert max(gaps) < watchdog / 2 + 1, gaps  # discovery paced for the watchdog

        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        manager.process = None
        assert manager.next(lambda m: "STOPPING" in m, "STOPPING=1", 10)["STOPPING"] == "1"
        code = process.wait(timeout=seconds(setting(UNIT, "TimeoutStopSec")))
        assert code == 0
        assert time.monotonic() - stopped_at < ServiceSettings().drain_timeout + 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()
        print((tmp_path / "stderr.log").read_text()[-8000:])  # shown when the test fails
    listing = subprocess.run(
        [CUTOUTD, "--config", str(config), "ledger", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    statuses = {row["status"] for row in json.loads(listing.stdout)}
    assert statuses <= {"succeeded", "pending"}  # finished, or released untouched by the drain
    lines = (tmp_path / "stderr.log").read_text().splitlines()
    assert all(line.startswith("{") for line in lines), lines  # JSON lines only
    events = [json.loads(line)["event"] for line in lines]
    assert {"service.ready", "http.listening", "service.stopping"} <= set(events)
    assert events.count("config.deprecated") == 1  # the old [metrics] section still works


def test_config_error_exits_78_before_ready(
    tmp_path: Path, write_config: WriteConfig, manager: ServiceManager
) -> None:
    """RestartPreventExitStatus=78: a config error must exit 78, and never say READY."""
    config = write_config(tmp_path / "root", "[metrics]\nport = 70000\n")
    result = subprocess.run(
        [CUTOUTD, "--config", str(config), "run"],
        env={**os.environ, "NOTIFY_SOCKET": str(manager.path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EX_CONFIG
    assert "metrics.port" in result.stderr
    with pytest.raises(AssertionError, match="no READY=1"):
        manager.next(lambda m: "READY" in m, "READY=1", timeout=0.5)
