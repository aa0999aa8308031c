"""The friendly terminal: `cutoutd run --once` with stderr on a real pseudo-terminal prints
short human lines and a progress bar; under systemd ($JOURNAL_STREAM) or redirected, JSON
lines; `[log] format` overrides both."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import CUTOUTD
from tests.helpers import write_shape


def run_on_a_tty(config: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """stderr on a pty (what a person sees); stdout a pipe. Returns (code, stdout, screen)."""
    leader, follower = pty.openpty()
    full_env = {**os.environ, "COLUMNS": "100", **env}
    full_env.pop("JOURNAL_STREAM", None)
    full_env.update(env)
    process = subprocess.Popen(
        [CUTOUTD, "--config", str(config), "run", "--once"],
        stdout=subprocess.PIPE, stderr=follower, env=full_env, text=True,
    )  # fmt: skip
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        screen += chunk
    stdout, _ = process.communicate(timeout=240)
    code = process.returncode
    os.close(leader)
    return code, stdout, screen.decode("utf-8", "replace")


def inputs(root: Path) -> None:
    write_shape(root / "input" / "a.jpg", size=(160, 120))
    write_shape(root / "input" / "b.jpg", size=(160, 120), color=(30, 60, 200))
    (root / "input" / "junk.jpg").write_bytes(b"junk")


def test_human_lines_and_a_progress_bar_on_a_terminal(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    root = tmp_path / "RemoveBGProcess"
    inputs(root)
    config = write_config(root, '[log]\nformat = "auto"\n', name="auto.toml")
    config.write_text(config.read_text().replace('[log]\nformat = "json"\nlevel = "INFO"\n', ""))
    code, stdout, screen = run_on_a_tty(config, {})
    assert code == 1, screen
    assert stdout.strip() == "processed 3: 2 succeeded, 1 failed, 0 skipped; 0 still pending"
    assert "✓ wrote output/a.png" in screen and "✓ wrote output/b.png" in screen
    assert "✗ failed junk.jpg: not an image" in screen
    assert "3/3" in screen and "1 failed" in screen  # the bar: done/total, failures
    assert '{"' not in screen  # no JSON for a person


def test_json_under_systemd_even_on_a_terminal(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    root = tmp_path / "RemoveBGProcess"
    inputs(root)
    config = write_config(root)
    config.write_text(config.read_text().replace('format = "json"', 'format = "auto"'))
    code, _, screen = run_on_a_tty(config, {"JOURNAL_STREAM": "8:12345"})
    assert code == 1
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines and all(line.startswith("<") and "{" in line for line in lines), lines[:3]
    events = {json.loads(line[line.index("{") :])["event"] for line in lines}
    assert {"cutout.succeeded", "item.failed"} <= events
