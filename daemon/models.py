"""Frozen value types shared by the core and the adapters. No I/O here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


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
    JPEG = "jpeg"

    @property
    def extension(self) -> str:
        """The output file's extension: `png`, `webp`, `jpg`."""
        return "jpg" if self is OutputFormat.JPEG else self.value

    @property
    def has_alpha(self) -> bool:
        return self is not OutputFormat.JPEG


class Align(StrEnum):
    CENTER = "center"
    BOTTOM = "bottom"


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
    """The `[engine]` output keys of configurations older than profiles."""

    mode: Mode = Mode.CUTOUT
    output_format: OutputFormat = OutputFormat.PNG
    trim: bool = False
    background_color: Rgb | None = None


@dataclass(frozen=True, slots=True)
class Padding:
    """Space around the trimmed subject: `amount` pixels, or per cent of the box's longer side."""

    amount: float
    percent: bool = False

    def pixels(self, longer_side: int) -> int:
        return round(longer_side * self.amount / 100) if self.percent else round(self.amount)

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else f"{self.amount:g}"


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One `[[profile.output]]`: what to make from an input's cutout, and where it goes.

    `canvas` (width, height) and `aspect` (width, height) both crop to the subject first, as
    `trim` does; `fill` and `align` place the subject on the canvas or aspect frame.
    """

    format: OutputFormat = OutputFormat.PNG
    quality: int = 90
    background_color: Rgb | None = None
    mode: Mode = Mode.CUTOUT
    trim: bool = False
    padding: Padding | None = None
    canvas: tuple[int, int] | None = None
    fill: float = 0.85
    align: Align = Align.CENTER
    aspect: tuple[int, int] | None = None
    max_side: int | None = None
    folder: str = ""

    @classmethod
    def from_options(cls, options: CutoutOptions) -> OutputSpec:
        return cls(
            format=options.output_format,
            background_color=options.background_color,
            mode=options.mode,
            trim=options.trim,
        )

    @property
    def crops(self) -> bool:
        """True when the output is cut to the subject's box before anything else."""
        return self.trim or self.canvas is not None or self.aspect is not None

    def fingerprint(self) -> str:
        """A stable text of every key that changes the bytes (not `folder`): two outputs
        with equal fingerprints of equal inputs are equal files (dedupe reuses them)."""
        parts = [
            f"{name}={getattr(self, name)}"
            for name in self.__dataclass_fields__
            if name != "folder"
        ]
        return ";".join(parts)


@dataclass(frozen=True, slots=True)
class Profile:
    """A recipe chosen by where the input is: the first profile whose `match` globs match
    the input's path relative to input/ wins; `engine` None means `[engine] kind`."""

    name: str
    match: tuple[str, ...]
    outputs: tuple[OutputSpec, ...]
    engine: str | None = None


@dataclass(frozen=True, slots=True)
class Cutout:
    """What an engine returns: the upright sRGB input (`image`, RGB or RGBA) and the
    subject's alpha (`alpha`, mode L, same size), which already includes the input's own
    transparency. Every output is rendered from this one cutout."""

    image: Image.Image
    alpha: Image.Image


@dataclass(frozen=True, slots=True)
class EncodedCutout:
    """A cutout still encoded (a remote engine's PNG with alpha), decoded only when the
    outputs are rendered, so that jobs waiting in flight hold bytes, not pixels. `source`
    names it in errors ("Adobe job ...")."""

    data: bytes
    source: str


EngineResult = Cutout | EncodedCutout


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
    claim_token: int | None = None  # the fencing token of the claim this copy was read under

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
    """What an engine gets for one input. Callables keep storage out of the engine.

    `read_bytes()` returns the input's content; `temporary_link()` a fresh URL to it
    (remote engines only); `record_submission()` persists a remote job before polling;
    `submitted` is a job stored by an earlier attempt, to resume instead of resubmitting.
    """

    item: Item
    read_bytes: Callable[[], bytes]
    temporary_link: Callable[[], str]
    record_submission: Callable[[SubmittedJob], None]
    submitted: SubmittedJob | None = None


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One output of one revision as the ledger has it: `path` relative to output/,
    `spec` the fingerprint of the OutputSpec it was rendered from (None before profiles)."""

    slot: int
    path: str
    spec: str | None
    bytes: int | None
    written_at: datetime | None
