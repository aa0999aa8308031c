from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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
