"""Machinery shared by the reliability suites and `bench/soak.py`: configs, the `cutoutd run`
subprocess, small distinct images, ledger and storage checks, and the figures they report.

Time is scaled down for CI consistently on every side (see docs/reliability.md): Adobe's
2 (soft) / 3 (hard) submissions per 3 s become 2 / 3 per `PERIOD`, job latency is 0.05-0.3 s,
status polls start at 0.1 s, retry backoff starts at 0.2 s.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.e2e.conftest import CUTOUTD
from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakePhotoshop
from tests.helpers import alpha_iou, encode, shape_image

ROOT = "/RemoveBGProcess"
PERIOD = 0.3  # Adobe's 3 s submit window, scaled by 0.1 on both sides
SMALL = (96, 72)
TERMINAL = frozenset({"succeeded", "failed", "skipped"})
RESULTS_ENV = "CUTOUTD_RESULTS_DIR"

Sections = Mapping[str, Mapping[str, Any]]


# -- configuration ------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def toml_text(sections: Sections) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def merge(base: Sections, extra: Sections | None) -> dict[str, dict[str, Any]]:
    merged = {name: dict(values) for name, values in base.items()}
    for name, values in (extra or {}).items():
        merged.setdefault(name, {}).update(values)
    return merged


def dropbox_sections(ledger: Path, adobe: FakePhotoshop | None = None) -> dict[str, dict[str, Any]]:
    """Dropbox source; the Photoshop engine when `adobe` is given, else the local one."""
    sections: dict[str, dict[str, Any]] = {
        "source": {"kind": "dropbox", "root": ROOT, "poll_interval": 0.5, "settle_seconds": 0},
        "engine": {"kind": "photoshop" if adobe else "local"},
        "ledger": {"url": f"sqlite:///{ledger}"},
        "retry": {"backoff_initial": 0.2, "backoff_multiplier": 2, "max_attempts": 5},
        "dropbox": {"timeout": 5, "max_retries_on_error": 1, "max_retries_on_rate_limit": 0},
        "service": {"drain_timeout": 2},
        "log": {"format": "json", "level": "INFO"},
        "http": {"port": 0},
    }
    if adobe is not None:
        sections["photoshop"] = {
            "api_url": adobe.url,
            "ims_url": adobe.ims_url,
            "submit_limit": 2,
            "submit_period": PERIOD,
            "max_in_flight": 20,
            "poll_initial": 0.1,
            "poll_multiplier": 1.5,
            "poll_max": 0.5,
            "job_timeout": 30,
            "request_timeout": 5,
        }
    return sections


def local_sections(root: Path, ledger: Path) -> dict[str, dict[str, Any]]:
    return {
        "source": {"kind": "local", "root": str(root), "poll_interval": 0.5, "settle_seconds": 0},
        "engine": {"kind": "local", "workers": 2},
        "ledger": {"url": f"sqlite:///{ledger}"},
        "retry": {"backoff_initial": 0.2, "backoff_multiplier": 2, "max_attempts": 5},
        "service": {"drain_timeout": 2},
        "log": {"format": "json", "level": "INFO"},
        "http": {"port": 0},
    }


def write_config(path: Path, sections: Sections) -> Path:
    path.write_text(toml_text(sections))
    return path


def environment(dropbox: FakeDropbox | None, adobe: FakePhotoshop | None) -> dict[str, str]:
    """What the subprocess needs: the SDK aimed at the fake Dropbox, and the credentials."""
    env: dict[str, str] = {}
    if dropbox is not None:
        env.update(dropbox.daemon_environment())
    if adobe is not None:
        env.update(adobe.daemon_environment())
    return env


def start_adobe(dropbox: FakeDropbox, **options: Any) -> FakePhotoshop:
    settings: dict[str, Any] = {
        "submit_limit": 3,
        "submit_period": PERIOD,
        "latency": (0.05, 0.3),
        "verify": dropbox.ca_path or True,
    }
    settings.update(options)
    return FakePhotoshop(**settings).start()


# -- images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shot:
    name: str
    data: bytes
    mask: np.ndarray


def shots(count: int, *, prefix: str = "shot", seed: int = 0, size: tuple[int, int] = SMALL
          ) -> list[Shot]:  # fmt: skip
    """`count` distinct JPEGs (distinct bytes: dedupe would skip identical ones)."""
    made = []
    for n in range(count):
        k = n + 1000 * seed
        color = (30 + (k * 37) % 150, 40 + (k * 53) % 130, 200 - (k * 29) % 150)
        shift = (k % 7) * 0.02
        image, mask = shape_image(
            size,
            shape="ellipse" if k % 2 else "rectangle",
            color=color,
            box=(0.2 + shift, 0.2, 0.7 + shift, 0.8 - (k % 5) * 0.03),
        )
        made.append(Shot(f"{prefix} {n:03d}.jpg", encode(image, "JPEG", quality=95), mask))
    return made


def put_shots(dropbox: FakeDropbox, batch: list[Shot]) -> None:
    for shot in batch:
        dropbox.put_file(f"{ROOT}/input/{shot.name}", shot.data)


def write_shots(folder: Path, batch: list[Shot]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shot in batch:
        (folder / shot.name).write_bytes(shot.data)


def output_name(name: str, extension: str = "png") -> str:
    return f"{name.rsplit('.', 1)[0]}.{extension}"


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# -- the daemon -----------------------------------------------------------------------------


@dataclass
class Daemon:
    """`cutoutd --config X run` as a subprocess; each start logs to its own file."""

    config: Path
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    log_files: list[Path] = field(default_factory=list)

    def start(self, *args: str) -> Daemon:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.runs += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        log_file = self.logs / f"run-{self.runs:03d}.log"
        self.log_files.append(log_file)
        with log_file.open("wb") as stderr:
            self.process = subprocess.Popen(
                [CUTOUTD, "--config", str(self.config), "run", *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **self.env},
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (drain) and wait; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stderr(self) -> str:
        return "".join(f.read_text(errors="replace") for f in self.log_files if f.exists())

    def events(self) -> Iterator[dict[str, Any]]:
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                yield json.loads(line)

    def count(self, event: str) -> int:
        return sum(1 for record in self.events() if record.get("event") == event)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    daemon: Daemon | None = None,
    what: str = "condition",
    interval: float = 0.1,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"cutoutd exited ({daemon.process and daemon.process.returncode})"
                                 f" while waiting for {what}:\n{daemon.stderr()[-4000:]}")  # fmt: skip
        time.sleep(interval)
    tail = daemon.stderr()[-4000:] if daemon else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


# -- the ledger -----------------------------------------------------------------------------


def ledger_rows(ledger: Path) -> list[dict[str, Any]]:
    """Every `items` row, read straight from the SQLite file (read-only)."""
    if not ledger.exists():
        return []
    connection = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM items ORDER BY id")]
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        connection.close()


def ledger_events(ledger: Path) -> list[dict[str, Any]]:
    connection = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM events ORDER BY id")]
    finally:
        connection.close()


def dump_ledger(ledger: Path) -> str:
    """Every row of every table, as text (for secret checks)."""
    connection = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    try:
        tables = [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return "\n".join(
            f"{table}: {row!r}" for table in tables for row in connection.execute(f'SELECT * FROM "{table}"')
        )  # fmt: skip
    finally:
        connection.close()


def statuses(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(row["status"] for row in rows)


# -- storage checks -------------------------------------------------------------------------


@dataclass
class Figures:
    """What one scenario ended with; `as_dict()` goes to the results file."""

    scenario: str
    images: int
    kills: int = 0
    kills_while_running: int = 0
    lost_inputs: int = 0
    duplicate_outputs: int = 0
    non_terminal: int = 0
    disagreements: int = 0
    engine_submissions: int = 0
    duplicate_submissions: int = 0
    resumed_jobs: int = 0
    claims: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        data.update(self.extra)
        return data


def check_dropbox_state(
    dropbox: FakeDropbox, rows: list[dict[str, Any]], batch: list[Shot], figures: Figures
) -> list[str]:
    """Ledger and Dropbox agree, each input has exactly one correct output and sits in
    archive/; returns the problems (figures are filled in as a side effect)."""
    outputs = {_rel(p, "output"): d for p, d in dropbox.files_under(f"{ROOT}/output").items()}
    archived = {_rel(p, "archive") for p in dropbox.files_under(f"{ROOT}/archive")}
    left = {_rel(p, "input") for p in dropbox.files_under(f"{ROOT}/input")}
    failed = {_rel(p, "failed") for p in dropbox.files_under(f"{ROOT}/failed")}
    return _check_state(outputs, archived, left, failed, rows, batch, figures, str.lower)


def check_local_state(
    root: Path, rows: list[dict[str, Any]], batch: list[Shot], figures: Figures
) -> list[str]:
    def files(area: str) -> dict[str, bytes]:
        base = root / area
        return {
            p.relative_to(base).as_posix(): p.read_bytes()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }

    hidden = [p.name for p in (root / "output").glob(".*") if p.is_file()]
    figures.extra["stale_temporary_files"] = len(hidden)
    return _check_state(
        files("output"), set(files("archive")), set(files("input")), set(files("failed")),
        rows, batch, figures, lambda p: p,
    )  # fmt: skip


def _rel(path: str, area: str) -> str:
    return path.split(f"/{area}/", 1)[1]


def _check_state(
    outputs: dict[str, bytes],
    archived: set[str],
    left: set[str],
    failed: set[str],
    rows: list[dict[str, Any]],
    batch: list[Shot],
    figures: Figures,
    key: Callable[[str], str],
) -> list[str]:
    problems = []
    expected = {key(output_name(s.name)): s for s in batch}
    found = {key(name): data for name, data in outputs.items()}
    lost = [s.name for o, s in expected.items() if o not in found or not is_png(found[o])]
    wrong = [s.name for o, s in expected.items() if o in found and is_png(found[o])
             and alpha_iou(found[o], s.mask) < 0.9]  # fmt: skip
    figures.lost_inputs = len(lost)
    figures.duplicate_outputs = len(set(found) - set(expected))
    figures.non_terminal = sum(1 for row in rows if row["status"] not in TERMINAL)
    if lost:
        problems.append(f"{len(lost)} inputs without an output: {lost[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} outputs that are not the input's cutout: {wrong[:5]}")
    if figures.duplicate_outputs:
        problems.append(f"unexpected outputs: {sorted(set(found) - set(expected))[:5]}")
    if figures.non_terminal:
        problems.append(f"{figures.non_terminal} revisions not terminal: {statuses(rows)}")
    if left or failed:
        problems.append(f"left in input/: {sorted(left)[:5]}, in failed/: {sorted(failed)[:5]}")
    per_path = Counter(key(row["path"]) for row in rows)
    if set(per_path) != {key(s.name) for s in batch} or max(per_path.values(), default=1) != 1:
        problems.append(f"ledger rows per input differ from one each: {per_path.most_common(3)}")
    disagreements = []
    for row in rows:
        if row["status"] != "succeeded":
            disagreements.append(f"{row['path']}: {row['status']} ({row['last_error']})")
        elif key(row["output_path"] or "") not in found:
            disagreements.append(f"{row['path']}: output {row['output_path']} missing")
        elif (row["archived_path"] or "").removeprefix("archive/") not in archived:
            disagreements.append(f"{row['path']}: archived_path {row['archived_path']} missing")
    referenced = {(row["archived_path"] or "").removeprefix("archive/") for row in rows}
    disagreements.extend(f"archive/{p}: in no ledger row" for p in sorted(archived - referenced))
    figures.disagreements = len(disagreements)
    if disagreements:
        problems.append(f"ledger and storage disagree: {disagreements[:5]}")
    return problems


# -- figures --------------------------------------------------------------------------------


def report(figures: Figures) -> None:
    """Print the figures; also write them to `$CUTOUTD_RESULTS_DIR/<scenario>.json`."""
    data = figures.as_dict()
    print(f"\nreliability figures: {json.dumps(data, sort_keys=True)}")
    directory = os.environ.get(RESULTS_ENV)
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{figures.scenario}.json").write_text(
            json.dumps(data, indent=2, sort_keys=True) + "\n"
        )


# -- the crash loop -------------------------------------------------------------------------


def crash_loop(
    daemon: Daemon, kills: int, rng: random.Random, window: float = 2.0
) -> tuple[int, int]:
    """Start the daemon and SIGKILL it at a random moment, `kills` times: one kill in five
    during start-up (migration, recovery, unfinished moves), the others within `window`
    seconds after it said `service.ready`. Returns (kills, kills after `service.ready`)."""
    while_running = 0
    for _ in range(kills):
        daemon.start()
        log = daemon.log_files[-1]
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.05, 1.5))
        else:
            wait_until(
                lambda log=log: '"service.ready"' in log.read_text(errors="replace"),
                60,
                daemon=daemon,
                what="service.ready",
                interval=0.02,
            )
            time.sleep(rng.uniform(0.0, window))
        assert daemon.alive(), f"cutoutd exited on its own:\n{daemon.stderr()[-3000:]}"
        daemon.kill()
        if '"service.ready"' in log.read_text(errors="replace"):
            while_running += 1
    return kills, while_running


# -- fault scenarios (test_faults.py) --------------------------------------------------------


def finished_names(ledger: Path) -> set[str]:
    """Inputs whose revision succeeded and whose input was archived: nothing left to do."""
    return {
        row["path"]
        for row in ledger_rows(ledger)
        if row["status"] == "succeeded" and row["archived_path"] and not row["relocate_to"]
    }


def wait_until_finished(
    ledger: Path, batch: list[Shot], timeout: float, daemon: Daemon | None = None
) -> float:
    """Wait until every shot of `batch` succeeded and was archived; the seconds it took."""
    started = time.monotonic()
    wanted = {shot.name for shot in batch}
    wait_until(
        lambda: wanted <= finished_names(ledger),
        timeout,
        daemon=daemon,
        what=f"{len(wanted)} images to finish",
    )
    return time.monotonic() - started


def event_counts(ledger: Path) -> Counter[str]:
    """Ledger events by name (`claimed`, `retry_scheduled`, `released`, `submitted`, ...)."""
    return Counter(event["event"] for event in ledger_events(ledger))


# -- bad inputs and secrets (test_bad_inputs.py, test_secrets.py) ------------------------------

_MEASURE = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(code)"
)


def run_measured(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`cutoutd ARGS` as a subprocess, like `run_cutoutd`; also its peak RSS in MiB (read
    by a small wrapper process, so that earlier children of pytest do not count)."""
    import sys
    import tempfile

    full_env = {**os.environ, **(env or {})}
    full_env.pop("JOURNAL_STREAM", None)
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, rss.name, CUTOUTD, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
        peak_kib = int(rss.read() or 0)
    return result, round(peak_kib / 1024, 1)


def fake_secrets(
    dropbox: FakeDropbox | None, adobe: FakePhotoshop | None, env: Mapping[str, str]
) -> dict[str, str]:
    """`{label: value}` of every secret in play: the credential variables in `env` and
    what the fakes issued (access and refresh tokens, temporary-link tokens, the signature
    of each Adobe result URL). Call it while the fakes still run."""
    secrets = {
        name: value
        for name, value in env.items()
        if value and name in ("DROPBOX_APP_SECRET", "DROPBOX_REFRESH_TOKEN", "CLIENT_SECRET")
    }
    if dropbox is not None:
        for n, token in enumerate(dropbox.access_tokens):
            secrets[f"dropbox access token {n}"] = token
        for n, token in enumerate(dropbox.refresh_tokens):
            secrets[f"dropbox refresh token {n}"] = token
        for n, token in enumerate(dropbox.temporary_link_tokens):
            secrets[f"dropbox temporary link {n}"] = token
    if adobe is not None:
        for n, token in enumerate(adobe.access_tokens):
            secrets[f"adobe access token {n}"] = token
        for n, url in enumerate(adobe.result_urls()):
            secrets[f"adobe result URL signature {n}"] = url.rsplit("?sig=", 1)[1]
    return secrets


def leaks(text: str, secrets: Mapping[str, str]) -> list[str]:
    """The labels of the secrets that appear in `text`."""
    return sorted(label for label, value in secrets.items() if value in text)


def listening_address(port: int) -> str | None:
    """The IPv4 address a TCP socket listens on at `port` in this network namespace
    (from /proc/net/tcp), or None when nothing listens there."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(":")
        if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: TCP_LISTEN
            return ".".join(str(b) for b in reversed(bytes.fromhex(address)))
    return None
