"""Rate limits are the service's trouble, not the image's: a storage call answered with a
rate limit (Dropbox 429 `too_many_requests`, `too_many_write_operations`, 503 with
Retry-After) is tried again in place, within the same claim, honouring Retry-After, for
at most `[retry] rate_limit_wait` seconds per call. Only when that runs out does the
`RateLimitedError` reach the pipeline, which gives the claim back without spending an
attempt (see `Pipeline._retry`).

`PatientStorage` wraps any `Storage` with this for the calls an image makes (read,
temporary link, metadata, upload, move, delete, copy); discovery and longpoll pass
straight through (their own loops already pace themselves).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from daemon.errors import RateLimitedError
from daemon.logs import context
from daemon.models import Area, ChangeBatch, RemoteFile, RootReport
from daemon.storage.base import Storage

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_WAIT = 1.0  # when the answer names no Retry-After
MIN_WAIT = 0.05


class RateLimitWaiter:
    """Runs a call, waiting out rate limits in place for up to `limit` seconds."""

    def __init__(
        self,
        limit: float,
        stop: threading.Event,
        monotonic: Callable[[], float] = time.monotonic,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.limit = limit
        self.stop = stop
        self.monotonic = monotonic
        self.on_wait = on_wait

    def call(self, what: str, function: Callable[[], T]) -> T:
        deadline = self.monotonic() + self.limit
        while True:
            try:
                return function()
            except RateLimitedError as exc:
                wait = self.wait_for(exc)
                if self.stop.is_set() or self.monotonic() + wait > deadline:
                    raise
                self._note(what, wait, exc)
                if self.stop.wait(wait):
                    raise

    @staticmethod
    def wait_for(error: RateLimitedError) -> float:
        wait = error.retry_after if error.retry_after is not None else DEFAULT_WAIT
        return max(float(wait), MIN_WAIT)

    def _note(self, what: str, wait: float, error: RateLimitedError) -> None:
        log.warning(
            "rate-limited on %s; trying again in %.1f s: %s",
            what,
            wait,
            error,
            extra=context("storage.rate_limited", call=what, retry_after=round(wait, 2)),
        )
        if self.on_wait is not None:
            self.on_wait(wait)


class PatientStorage:
    """A `Storage` whose per-image calls wait out rate limits in place."""

    def __init__(self, storage: Storage, waiter: RateLimitWaiter) -> None:
        self.inner = storage
        self.waiter = waiter

    # -- passed straight through ---------------------------------------------------------

    @property
    def key(self) -> str:
        return self.inner.key

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def inspect_root(self) -> RootReport:
        return self.inner.inspect_root()

    def list_changes(self, cursor: str | None) -> ChangeBatch:
        return self.inner.list_changes(cursor)

    def wait_for_changes(self, cursor: str, timeout: float, stop: threading.Event) -> bool:
        return self.inner.wait_for_changes(cursor, timeout, stop)

    def input_thumbnail(self, file: RemoteFile) -> bytes | None:
        return self.inner.input_thumbnail(file)  # a nicety: not worth waiting for

    # -- waited out in place ---------------------------------------------------------------

    def ensure_layout(self) -> None:
        self.waiter.call("create folders", self.inner.ensure_layout)

    def read(self, file: RemoteFile) -> bytes:
        return self.waiter.call("download", lambda: self.inner.read(file))

    def current_rev(self, path: str) -> str | None:
        return self.waiter.call("get metadata", lambda: self.inner.current_rev(path))

    def temporary_link(self, file: RemoteFile) -> str:
        return self.waiter.call("temporary link", lambda: self.inner.temporary_link(file))

    def write(self, area: Area, path: str, data: bytes) -> str:
        return self.waiter.call("upload", lambda: self.inner.write(area, path, data))

    def exists(self, area: Area, path: str) -> bool:
        return self.waiter.call("get metadata", lambda: self.inner.exists(area, path))

    def copy(self, area: Area, source: str, target: str) -> str:
        return self.waiter.call("copy", lambda: self.inner.copy(area, source, target))

    def relocate(self, file: RemoteFile, area: Area) -> str:
        return self.waiter.call("move", lambda: self.inner.relocate(file, area))

    def relocate_many(self, files: Sequence[RemoteFile], area: Area) -> list[str | Exception]:
        """Batched moves; entries that were rate-limited go again (only those), in place."""
        results: list[str | Exception] = [RateLimitedError("not tried")] * len(files)
        todo = list(range(len(files)))

        def attempt() -> None:
            answers = self.inner.relocate_many([files[n] for n in todo], area)
            for n, answer in zip(list(todo), answers, strict=True):
                results[n] = answer
                if not isinstance(answer, RateLimitedError):
                    todo.remove(n)
            if todo:
                waits = [self.waiter.wait_for(results[n]) for n in todo]  # type: ignore[arg-type]
                raise RateLimitedError(f"{len(todo)} moves rate-limited", max(waits))

        with contextlib.suppress(RateLimitedError):  # what is left carries its own error
            self.waiter.call("move batch", attempt)
        return results

    def find_relocated(self, file: RemoteFile, area: Area) -> str | None:
        return self.waiter.call("get metadata", lambda: self.inner.find_relocated(file, area))

    def restore(self, area: Area, path: str, to_path: str) -> str:
        return self.waiter.call("move", lambda: self.inner.restore(area, path, to_path))

    def delete(self, file: RemoteFile) -> None:
        self.waiter.call("delete", lambda: self.inner.delete(file))
