"""The Storage port. Paths are POSIX, relative to an area folder (`input/`, `output/`, ...)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from daemon.models import Area, ChangeBatch, RemoteFile, RootReport

IGNORED_PREFIXES = (".", "~$")
IGNORED_SUFFIXES = (".part", ".crdownload", ".tmp", ".partial", ".download")


def is_ignored_name(name: str) -> bool:
    """Hidden and temporary files are never inputs (`.x`, `~$x`, `x.part`, `x.crdownload`)."""
    lower = name.lower()
    return lower.startswith(IGNORED_PREFIXES) or lower.endswith(IGNORED_SUFFIXES)


class Storage(Protocol):
    """Where inputs come from and results go.

    Every method may raise `TransientError` (retry later), `AuthError` (stop) or,
    for `list_changes`, `CursorResetError` (list again from scratch with `cursor=None`).
    """

    @property
    def key(self) -> str:
        """A stable identity for this storage (names its cursor in the ledger)."""
        ...

    def describe(self) -> str:
        """Human description, e.g. `local folder /srv/RemoveBGProcess`."""
        ...

    def inspect_root(self) -> RootReport:
        """Where the root folder is looked for and whether it exists (creates nothing)."""
        ...

    def ensure_layout(self) -> None:
        """Create the `input/`, `output/`, `archive/` and `failed/` folders when missing."""
        ...

    def list_changes(self, cursor: str | None) -> ChangeBatch:
        """Changes in `input/` since `cursor` (everything present when `cursor` is None)."""
        ...

    def read(self, file: RemoteFile) -> bytes:
        """Content of exactly this revision. `ItemGoneError` if it was deleted or replaced."""
        ...

    def current_rev(self, path: str) -> str | None:
        """The input's current rev, or None when it no longer exists."""
        ...

    def temporary_link(self, file: RemoteFile) -> str:
        """A fresh URL from which a remote engine can fetch the input (a secret)."""
        ...

    def input_thumbnail(self, file: RemoteFile) -> bytes | None:
        """An encoded picture of exactly this revision for the status page's "before"
        thumbnail, for an input whose bytes cutoutd never holds (a remote engine fetches it
        itself): Dropbox's own small thumbnail, or a local folder's file as it is on disk.
        None when the storage makes none for it (not a picture it renders, or replaced)."""
        ...

    def write(self, area: Area, path: str, data: bytes) -> str:
        """Write a whole file, replacing any existing one; returns the stored path."""
        ...

    def exists(self, area: Area, path: str) -> bool: ...

    def copy(self, area: Area, source: str, target: str) -> str:
        """Copy within an area, replacing the target; returns the stored path."""
        ...

    def relocate(self, file: RemoteFile, area: Area) -> str:
        """Move an input into `archive/` or `failed/`, keeping subfolders and choosing a
        unique name on conflict; returns the new path relative to that area."""
        ...

    def relocate_many(self, files: Sequence[RemoteFile], area: Area) -> list[str | Exception]:
        """`relocate` for several inputs at once (Dropbox: `files/move_batch_v2`); one
        result per file, in order: the new path, or the error that file met. An error of
        the whole call (the batch could not be sent) is raised."""
        ...

    def find_relocated(self, file: RemoteFile, area: Area) -> str | None:
        """Where an interrupted `relocate` of this revision already put it: the input's
        name in `area`, or one of its `x (1).jpg` variants, holding the same content (the
        last such one); None when there is none. Lets a restart finish the bookkeeping of a
        move that went through just before a crash."""
        ...

    def restore(self, area: Area, path: str, to_path: str) -> str:
        """Move a file from `archive/` or `failed/` back into `input/`; returns its path."""
        ...

    def delete(self, file: RemoteFile) -> None:
        """Delete an input (archive policy `delete`)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def wait_for_changes(self, cursor: str, timeout: float, stop: threading.Event) -> bool:
        """Block up to `timeout` s for a change after `cursor`; True if something changed.
        Storages without change notification return False after waiting on `stop`."""
        ...


def relocate_each(
    relocate: Callable[[RemoteFile, Area], str], files: Sequence[RemoteFile], area: Area
) -> list[str | Exception]:
    """`relocate_many` for a storage without batches: one move after the other."""
    results: list[str | Exception] = []
    for file in files:
        try:
            results.append(relocate(file, area))
        except Exception as exc:  # each file's own outcome, as a batch reports it
            results.append(exc)
    return results
