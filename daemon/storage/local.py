"""A plain local folder standing in for Dropbox.

Revisions: a local file has no server-side rev, so the scan derives one:
`rev = sha256("<content_hash>:<mtime_ns>")[:16]`, where content_hash is Dropbox's
block hash of the bytes. The rev therefore changes whenever the content changes, and
also when a file is written again with the same bytes (a re-drop after archiving is a
new revision; dedupe then skips it without engine work). Hashes are cached by
(size, mtime_ns, inode) so a scan only reads new or changed files.

Files modified less than `settle_seconds` ago are still being copied in: they are
counted as settling and listed by a later scan.

The local filesystem is case-sensitive, so the identity key (`path_lower`) of a local
file is its exact relative path: `A.jpg` and `a.jpg` are two inputs.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from daemon.errors import ItemGoneError, PermanentItemError, TransientError
from daemon.hashing import content_hash_stream
from daemon.models import Area, ChangeBatch, RemoteFile, RootReport
from daemon.storage.base import is_ignored_name, relocate_each

Signature = tuple[int, int, int]


def derive_rev(content_hash: str, mtime_ns: int) -> str:
    return hashlib.sha256(f"{content_hash}:{mtime_ns}".encode()).hexdigest()[:16]


def name_variants(path: PurePosixPath) -> Iterator[PurePosixPath]:
    """`x.jpg`, `x (1).jpg`, `x (2).jpg`, ... without end."""
    yield path
    number = 0
    while True:
        number += 1
        yield path.with_name(f"{path.stem} ({number}){path.suffix}")


def unique_name(path: PurePosixPath, taken: Callable[[PurePosixPath], bool]) -> PurePosixPath:
    """`x.jpg`, then `x (1).jpg`, `x (2).jpg`, ... (Dropbox's autorename shape)."""
    candidate, number = path, 0
    while taken(candidate):
        number += 1
        candidate = path.with_name(f"{path.stem} ({number}){path.suffix}")
    return candidate


class LocalStorage:
    """Storage on a local folder holding `input/`, `output/`, `archive/` and `failed/`."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        recursive: bool = False,
        settle_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.recursive = recursive
        self.settle_seconds = settle_seconds
        self.clock = clock
        self._hashes: dict[str, tuple[Signature, str]] = {}
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return f"local:{self.root}"

    def describe(self) -> str:
        return f"local folder {self.root}"

    def area(self, area: Area) -> Path:
        return self.root / area.value

    def inspect_root(self) -> RootReport:
        return RootReport(str(self.root), "local folder", self.root.is_dir())

    def ensure_layout(self) -> None:
        for area in Area:
            try:
                self.area(area).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TransientError(f"cannot create {self.area(area)}: {exc.strerror}") from exc

    # -- listing --------------------------------------------------------------------------

    def _walk(self) -> Iterator[Path]:
        base = self.area(Area.INPUT)
        for directory, folders, files in os.walk(base):
            folders[:] = (
                sorted(f for f in folders if not is_ignored_name(f)) if self.recursive else []
            )
            for name in sorted(files):
                if not is_ignored_name(name):
                    yield Path(directory, name)

    def _describe_file(self, path: Path) -> RemoteFile | None:
        """The file's current revision; None if it vanished or is not a regular file."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        relative = path.relative_to(self.area(Area.INPUT)).as_posix()
        signature = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            cached = self._hashes.get(relative)
        if cached and cached[0] == signature:
            content_hash = cached[1]
        else:
            content_hash = self._hash(path)
            with self._lock:
                self._hashes[relative] = (signature, content_hash)
        return RemoteFile(
            path=relative,
            path_lower=relative,
            rev=derive_rev(content_hash, stat.st_mtime_ns),
            size=stat.st_size,
            content_hash=content_hash,
        )

    def _hash(self, path: Path) -> str:
        try:
            with path.open("rb") as stream:
                return content_hash_stream(stream)
        except FileNotFoundError:
            raise ItemGoneError(f"{path.name} was deleted") from None
        except PermissionError as exc:
            raise PermanentItemError(f"unreadable: {exc.strerror}") from exc

    def list_changes(self, cursor: str | None) -> ChangeBatch:
        """A full scan of `input/`; the cursor is a digest of what it found, so an
        unchanged folder yields no changes. Known revisions are ignored by the ledger."""
        files: list[RemoteFile] = []
        settling = 0
        now = self.clock()
        for path in self._walk():
            try:
                if now - path.stat().st_mtime < self.settle_seconds:
                    settling += 1
                    continue
                described = self._describe_file(path)
            except (ItemGoneError, FileNotFoundError):
                continue
            except PermanentItemError:
                continue  # unreadable: listed again once permissions are fixed
            if described is not None:
                files.append(described)
        self._forget_missing({f.path for f in files})
        digest = hashlib.sha256("\n".join(f"{f.path}\0{f.rev}" for f in files).encode()).hexdigest()
        changes = () if digest == cursor else tuple(files)
        return ChangeBatch(changes=changes, cursor=digest, settling=settling)

    def _forget_missing(self, present: set[str]) -> None:
        with self._lock:
            for path in set(self._hashes) - present:
                del self._hashes[path]

    # -- reading --------------------------------------------------------------------------

    def _input_path(self, path: str) -> Path:
        return self.area(Area.INPUT) / path

    def current_rev(self, path: str) -> str | None:
        try:
            described = self._describe_file(self._input_path(path))
        except ItemGoneError:
            return None
        return described.rev if described else None

    def read(self, file: RemoteFile) -> bytes:
        path = self._input_path(file.path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ItemGoneError("deleted before processing") from None
        except IsADirectoryError:
            raise ItemGoneError("is a folder, not a file") from None
        except PermissionError as exc:
            raise PermanentItemError(f"unreadable: {exc.strerror}") from exc
        if self.current_rev(file.path) != file.rev:
            raise ItemGoneError("replaced by a newer revision before processing")
        return data

    def input_thumbnail(self, file: RemoteFile) -> bytes | None:
        """The input itself: it is on this disk, so nothing is transferred."""
        try:
            return self.read(file)
        except ItemGoneError:
            return None

    def temporary_link(self, file: RemoteFile) -> str:
        raise PermanentItemError("a local folder cannot hand out URLs; use source.kind = dropbox")

    # -- writing --------------------------------------------------------------------------

    def write(self, area: Area, path: str, data: bytes) -> str:
        """Write whole: a hidden temporary name in the same folder, fsync, then rename."""
        target = self.area(area) / path
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise TransientError(f"cannot write {area.value}/{path}: {exc.strerror}") from exc
        return path

    def exists(self, area: Area, path: str) -> bool:
        return (self.area(area) / path).is_file()

    def copy(self, area: Area, source: str, target: str) -> str:
        try:
            data = (self.area(area) / source).read_bytes()
        except FileNotFoundError:
            raise ItemGoneError(f"{area.value}/{source} no longer exists") from None
        return self.write(area, target, data)

    def _move_unique(self, source: Path, area: Area, path: str) -> str:
        base = self.area(area)
        wanted = PurePosixPath(path)
        try:
            (base / wanted).parent.mkdir(parents=True, exist_ok=True)
            linked = self._linked_copy(source, base, wanted)
            if linked is not None:  # a crash came between link and unlink last time
                source.unlink()
                return linked
            while True:
                chosen = unique_name(wanted, lambda p: (base / p).exists())
                try:
                    os.link(source, base / chosen)  # fails if taken meanwhile: no overwrite
                except FileExistsError:
                    continue
                except OSError:
                    os.replace(source, base / chosen)  # filesystems without hard links
                    return chosen.as_posix()
                source.unlink()
                return chosen.as_posix()
        except FileNotFoundError:
            raise ItemGoneError(f"{source.name} no longer exists") from None
        except OSError as exc:
            raise TransientError(f"cannot move {source.name}: {exc.strerror}") from exc

    @staticmethod
    def _linked_copy(source: Path, base: Path, wanted: PurePosixPath) -> str | None:
        """The name under `base` that is already a hard link to `source`, if any."""
        if source.stat().st_nlink < 2:
            return None
        for candidate in name_variants(wanted):
            if not (base / candidate).exists():
                return None
            if os.path.samefile(source, base / candidate):
                return candidate.as_posix()
        return None  # pragma: no cover - name_variants never ends

    def relocate(self, file: RemoteFile, area: Area) -> str:
        return self._move_unique(self._input_path(file.path), area, file.path)

    def relocate_many(self, files: Sequence[RemoteFile], area: Area) -> list[str | Exception]:
        return relocate_each(self.relocate, files, area)

    def find_relocated(self, file: RemoteFile, area: Area) -> str | None:
        found = None
        for candidate in name_variants(PurePosixPath(file.path)):
            path = self.area(area) / candidate
            if not path.is_file():
                return found
            try:
                if self._hash(path) == file.content_hash:
                    found = candidate.as_posix()
            except (ItemGoneError, PermanentItemError):
                continue
        return found  # pragma: no cover - name_variants never ends

    def restore(self, area: Area, path: str, to_path: str) -> str:
        return self._move_unique(self.area(area) / path, Area.INPUT, to_path)

    def delete(self, file: RemoteFile) -> None:
        try:
            self._input_path(file.path).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TransientError(f"cannot delete {file.path}: {exc.strerror}") from exc

    def close(self) -> None:
        pass

    def wait_for_changes(self, cursor: str, timeout: float, stop: threading.Event) -> bool:
        stop.wait(timeout)
        return False
