from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CUTOUTD = shutil.which("cutoutd", path=os.path.dirname(sys.executable)) or "cutoutd"


@pytest.fixture(autouse=True)
def private_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dropbox source keeps its state (thumbnails, spool) in `$XDG_STATE_HOME/cutoutd`:
    each test gets its own, never the home directory of whoever runs the tests (where the
    thumbnails of one test's ledger would be shown for another's revisions)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


def run_cutoutd(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real installed `cutoutd` command as a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("JOURNAL_STREAM", None)  # plain JSON lines on stderr, even under systemd
    return subprocess.run(
        [CUTOUTD, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
    )


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(root: Path, extra: str = "", name: str = "cutoutd.toml") -> Path:
        path = tmp_path / name
        http = (
            "" if "[http]" in extra or "[metrics]" in extra else "[http]\nport = 0\n"
        )  # never the shared 9464
        path.write_text(
            f'[source]\nroot = "{root}"\nsettle_seconds = 0\npoll_interval = 0.5\n'
            f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.sqlite3"}"\n'
            f"[retry]\nbackoff_initial = 0.1\nbackoff_multiplier = 1\nmax_attempts = 2\n"
            f'[log]\nformat = "json"\nlevel = "INFO"\n{http}{extra}'
        )
        return path

    return write


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """`cutoutd run` in the background; its JSON log lines tell the status page's port."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._stderr = log.open("w")
        full_env = {**os.environ, **env}
        full_env.pop("JOURNAL_STREAM", None)
        self.process = subprocess.Popen(
            [CUTOUTD, "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=full_env,
        )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def url(self) -> str:
        def port() -> int | None:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            found = [e["port"] for e in self.events() if e.get("event") == "http.listening"]
            return found[0] if found else None

        return f"http://127.0.0.1:{wait_for(port, 60, 'the status page to listen')}"

    def stop(self) -> int:
        self.process.terminate()
        return self.wait(30)

    def wait(self, timeout: float) -> int:
        """The exit status, once it exits by itself (or after `stop`)."""
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is not None:
                self._stderr.close()
