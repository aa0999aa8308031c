"""Frozen value types shared by the core and the adapters. No I/O here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import PurePosixPath


class ItemStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED})


class Area(StrEnum):
    """The four folders under the storage root."""

    INPUT = "input"
    OUTPUT = "output"
    ARCHIVE = "archive"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One revision of one input file, as storage reports it.

    `path` is relative to `input/`, POSIX style, as displayed (case preserved);
    `path_lower` is the identity key (Dropbox semantics).
    """

    path: str
    path_lower: str
    rev: str
    size: int
    content_hash: str
    modified_at: datetime | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True, slots=True)
class DeletedEntry:
    """Storage says this path no longer exists."""

    path_lower: str


Change = RemoteFile | DeletedEntry


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """One page of what changed since a cursor. `cursor` is what to store once these
    are recorded; when `has_more` is true, ask again with it for the next page.

    `settling` counts files seen but not yet stable (still being written); they come
    back in a later batch.
    """

    changes: tuple[Change, ...]
    cursor: str
    has_more: bool = False
    settling: int = 0


class Mode(StrEnum):
    CUTOUT = "cutout"
    MASK = "mask"


class OutputFormat(StrEnum):
    PNG = "png"
    WEBP = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


@dataclass(frozen=True, slots=True)
class Rgb:
    red: int
    green: int
    blue: int

    @classmethod
    def parse(cls, text: str) -> Rgb:
        """Parse `#rrggbb`; raises ValueError otherwise."""
        if len(text) != 7 or not text.startswith("#"):
            raise ValueError("expected #rrggbb")
        value = int(text[1:], 16)
        return cls(value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF)

    def __str__(self) -> str:
        return f"#{self.red:02x}{self.green:02x}{self.blue:02x}"


@dataclass(frozen=True, slots=True)
class RootReport:
    """Where a storage looks for its root folder (`cutoutd check`)."""

    root: str
    location: str  # "local folder", "Dropbox team space; root namespace 3160919009", ...
    exists: bool
    elsewhere: str | None = None  # the account's other namespace ("root", "home") has one


@dataclass(frozen=True, slots=True)
class CutoutOptions:
    mode: Mode = Mode.CUTOUT
    output_format: OutputFormat = OutputFormat.PNG
    trim: bool = False
    background_color: Rgb | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One ledger row: one input revision and where it stands."""

    id: int
    path: str
    path_lower: str
    rev: str
    content_hash: str
    size: int
    status: ItemStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    engine: str | None
    job_id: str | None
    status_url: str | None
    output_path: str | None
    discovered_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    archived_at: datetime | None
    archived_path: str | None

    def as_file(self) -> RemoteFile:
        return RemoteFile(
            path=self.path,
            path_lower=self.path_lower,
            rev=self.rev,
            size=self.size,
            content_hash=self.content_hash,
        )


@dataclass(frozen=True, slots=True)
class SubmittedJob:
    """A remote engine job whose id is stored before the first poll."""

    job_id: str
    status_url: str


@dataclass(slots=True)
class EngineJob:
    """What an engine gets for one cutout. Callables keep storage out of the engine.

    `read_bytes()` returns the input's content; `temporary_link()` a fresh URL to it
    (remote engines only); `record_submission()` persists a remote job before polling;
    `submitted` is a job stored by an earlier attempt, to resume instead of resubmitting.
    """

    item: Item
    options: CutoutOptions
    read_bytes: Callable[[], bytes]
    temporary_link: Callable[[], str]
    record_submission: Callable[[SubmittedJob], None]
    submitted: SubmittedJob | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CutoutResult:
    data: bytes
    output_format: OutputFormat
