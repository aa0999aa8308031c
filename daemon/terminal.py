"""The friendly terminal: short human lines and a live progress bar (rich), for a person
watching `cutoutd run` or `run --once`. Used only when stderr is a terminal and not under
systemd (`[log] format = "auto"`, the default); JSON lines otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import datetime

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from daemon.observers import NullObserver
from daemon.secrets import redact

CONSOLE = Console(stderr=True, highlight=False)
# event -> (symbol, style); events not named here show at DEBUG only, or when WARNING+.
SHOWN = {
    "cutout.succeeded": ("✓", "green"),
    "item.failed": ("✗", "bold red"),
    "item.skipped": ("–", "yellow"),
    "item.retry": ("↻", "yellow"),
    "discovery.changes": ("+", "cyan"),
    "service.ready": ("●", "bold"),
    "service.stopping": ("■", "bold"),
    "http.listening": ("●", "bold"),
    "ledger.opened": ("·", "dim"),
    "recovery.items": ("↺", "yellow"),
}


def human_terminal(log_format: str) -> bool:
    """`auto`: human lines on a terminal, JSON under systemd or when stderr is redirected."""
    if log_format != "auto":
        return False
    return sys.stderr.isatty() and not os.environ.get("JOURNAL_STREAM")


class HumanHandler(logging.Handler):
    """One short line per event worth a person's attention, printed above the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = str(getattr(record, "event", ""))
            symbol, style = SHOWN.get(event, ("!", "yellow") if record.levelno >= 30 else ("", ""))
            if not symbol and logging.getLogger().level > logging.DEBUG:
                return
            if record.levelno >= logging.ERROR and event not in SHOWN:
                symbol, style = "✗", "bold red"
            clock = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
            line = Text(f"{clock} ", style="dim")
            line.append(f"{symbol or '·'} {redact(record.getMessage())}", style=style or "")
            CONSOLE.print(line)
        except Exception:
            self.handleError(record)


class TerminalProgress(NullObserver):
    """done/total, rate, ETA and failures; total = finished so far + what the ledger still
    has waiting (read once a second)."""

    def __init__(self, waiting: Callable[[], int]) -> None:
        self.waiting = waiting
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress = Progress(
            TextColumn("[bold]cutting out"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("[red]{task.fields[failures]}"),
            console=CONSOLE,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task("", total=None, rate="", failures="")
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)

    def __enter__(self) -> TerminalProgress:
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self._refresh()
        self._progress.stop()

    def item_finished(self, outcome: str, seconds_since_discovery: float) -> None:
        with self._lock:
            self.done += 1
            self.failed += outcome == "failed"

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._refresh()

    def _refresh(self) -> None:
        try:
            waiting = self.waiting()
        except Exception:  # the ledger is busy: keep the last total
            return
        with self._lock:
            done, failed = self.done, self.failed
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed * 60:.1f}/min" if done and elapsed else ""
        self._progress.update(
            self._task,
            completed=done,
            total=done + waiting,
            rate=rate,
            failures=f"{failed} failed" if failed else "",
        )
