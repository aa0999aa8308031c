"""The result spool: a remote engine's result kept on local disk until its outputs are written.

A result received from Adobe is billed; if an output upload then fails (a rate limit, an
outage, a claim given back, a stop, SIGKILL), the next attempt of that ledger row writes
from here instead of resubmitting. One file per row, named `<row id>.<job>.bin` (`job` is
a digest of the remote job id), holding the engine's encoded result as received, written
under a temporary name, fsynced, renamed, and the directory fsynced: an entry is whole or
absent. Entries go when the row's output is written or the row ends otherwise, and at
start for rows that are terminal. The spool is bounded (`[spool] max_bytes`): a result
that would not fit is not spooled, and a WARNING says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from daemon.logs import context
from daemon.models import EncodedCutout

log = logging.getLogger(__name__)
TEMPORARY_PREFIX = ".tmp-"
SUFFIX = ".bin"


def job_key(job: str) -> str:
    """A file-name-safe key for a job id (Adobe's ids may be URNs with colons)."""
    return hashlib.sha256(job.encode()).hexdigest()[:16]


class ResultSpool:
    """Results waiting for their output to be written, keyed by ledger row and job."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the directory (mode 0700) and drop temporary files a crash left."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in self.directory.glob(f"{TEMPORARY_PREFIX}*"):
            path.unlink(missing_ok=True)

    def _entries(self, item_id: int) -> list[Path]:
        return sorted(self.directory.glob(f"{item_id}.*"))

    def save(self, item_id: int, job: str, result: EncodedCutout) -> bool:
        """Keep `result` of `job` for the row; False (and a WARNING) when the spool is full."""
        target = self.directory / f"{item_id}.{job_key(job)}{SUFFIX}"
        with self._lock:
            if self.size() + len(result.data) > self.max_bytes:
                log.warning(
                    "result spool full (%d bytes): result of row %d kept in memory only",
                    self.max_bytes,
                    item_id,
                    extra=context("spool.full", item_id=item_id, max_bytes=self.max_bytes),
                )
                return False
            temporary = self.directory / f"{TEMPORARY_PREFIX}{target.name}"
            with temporary.open("wb") as stream:
                stream.write(result.data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
            self._sync_directory()
            for stale in self._entries(item_id):
                if stale != target:
                    stale.unlink(missing_ok=True)
        return True

    def load(self, item_id: int, job: str) -> EncodedCutout | None:
        """The spooled result of this row and job, or None."""
        path = self.directory / f"{item_id}.{job_key(job)}{SUFFIX}"
        try:
            return EncodedCutout(path.read_bytes(), f"the spooled result of job {job}")
        except OSError:
            return None

    def discard(self, item_id: int) -> None:
        with self._lock:
            for path in self._entries(item_id):
                path.unlink(missing_ok=True)

    def item_ids(self) -> set[int]:
        found = set()
        for path in self.directory.glob("*.*.*"):
            with contextlib.suppress(ValueError):
                found.add(int(path.name.split(".", 1)[0]))
        return found

    def clean(self, still_wanted: Callable[[int], bool]) -> int:
        """Remove the entries of rows that no longer want them; how many went."""
        removed = 0
        for item_id in sorted(self.item_ids()):
            if not still_wanted(item_id):
                self.discard(item_id)
                removed += 1
        if removed:
            log.info(
                "removed %d spooled results of finished rows",
                removed,
                extra=context("spool.cleaned", count=removed),
            )
        return removed

    def size(self) -> int:
        """Bytes held (read at scrape time for /metrics)."""
        total = 0
        for path in self.directory.glob("*"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
