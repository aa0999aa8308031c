"""Dropbox storage: the adapter, which with `dropbox_errors` (error translation) and
`dropbox_auth` (credentials, authorization) is all that imports the `dropbox` SDK.

Vendor types stay in here: callers get `RemoteFile`, `ChangeBatch` and plain paths, and
every SDK or `requests` error is translated once, by `translate_error`, into the classes
of `daemon.errors`. The folders `input/`, `output/`, `archive/` and `failed/` live under
`root` (e.g. `/RemoveBGProcess`); paths handed in and out are relative to one of them.

The SDK's session comes from `dropbox.create_session()`, so its host variables
(`DROPBOX_API_HOST`, `DROPBOX_API_CONTENT_HOST`, `DROPBOX_API_NOTIFY_HOST`, read when
`dropbox` is first imported) and `REQUESTS_CA_BUNDLE` keep working. Access tokens are
short-lived; the SDK refreshes them from the refresh token, and each new one is
registered with `daemon.secrets` so that log redaction knows it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import dropbox
import requests
from dropbox import exceptions as sdk_errors
from dropbox import files as sdk_files

from daemon.config import DropboxSettings
from daemon.errors import (
    ConfigError,
    CursorResetError,
    ItemGoneError,
    PermanentItemError,
    TransientError,
)
from daemon.hashing import content_hash_bytes
from daemon.models import Area, Change, ChangeBatch, DeletedEntry, RemoteFile, RootReport
from daemon.secrets import register_secret
from daemon.storage.base import is_ignored_name
from daemon.storage.dropbox_auth import DropboxCredentials as DropboxCredentials
from daemon.storage.dropbox_auth import authorize_dropbox as authorize_dropbox
from daemon.storage.dropbox_errors import (
    VENDOR_ERRORS,
    api_error,
    note_retry_after,
    tag_chain,
    translate_error,
)
from daemon.storage.dropbox_namespace import Namespace, other_client, select_namespace

log = logging.getLogger(__name__)

MIB = 1024 * 1024
UPLOAD_LIMIT = 150 * MIB  # one `files/upload` call; larger files go through a session
UPLOAD_CHUNK = 64 * MIB  # per upload-session call
BATCH_SIZE = 1000  # entries per `files/move_batch_v2`
LONGPOLL_GRACE = 10.0  # socket timeout beyond the longpoll's own (the server adds jitter)
# `files/get_thumbnail_v2` errors meaning "no thumbnail for this file", not a failure.
NO_THUMBNAIL = frozenset(
    {
        "unsupported_extension",
        "unsupported_image",
        "conversion_error",
        "encrypted_content",
        "not_found",
    }
)


class DropboxStorage:
    """Storage on a Dropbox folder holding `input/`, `output/`, `archive/` and `failed/`."""

    upload_limit = UPLOAD_LIMIT
    chunk_size = UPLOAD_CHUNK

    def __init__(
        self,
        root: str,
        recursive: bool,
        settings: DropboxSettings,
        credentials: DropboxCredentials,
        session: requests.Session | None = None,
    ) -> None:
        stripped = root.strip("/")
        self.root = f"/{stripped}" if stripped else ""
        self.recursive = recursive
        self.settings = settings
        self._owns_session = session is None
        self._session = session if session is not None else dropbox.create_session()
        self._session.hooks["response"].append(note_retry_after)
        for secret in (credentials.refresh_token, credentials.app_secret):
            if secret:
                register_secret(secret)
        self._base = dropbox.Dropbox(
            oauth2_refresh_token=credentials.refresh_token,
            app_key=credentials.app_key,
            app_secret=credentials.app_secret,
            session=self._session,
            timeout=settings.timeout,
            max_retries_on_error=settings.max_retries_on_error,
            max_retries_on_rate_limit=settings.max_retries_on_rate_limit,
            user_agent="cutoutd",
        )
        self._client = self._base  # rooted in the namespace once it is known
        self.namespace: Namespace | None = None
        self._namespace_lock = threading.Lock()
        self._closing = threading.Event()
        self._known_token: str | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def key(self) -> str:
        return "dropbox:" + (self.root.lower() or "/")

    def describe(self) -> str:
        return f"Dropbox folder {self.root or '/'}"

    def close(self) -> None:
        """Stop waits in progress and release the connection pool."""
        self._closing.set()
        if self._owns_session:
            self._session.close()

    def _full(self, area: Area, path: str = "") -> str:
        base = f"{self.root}/{area.value}"
        path = path.strip("/")
        return f"{base}/{path}" if path else base

    def _relative(self, area: Area, path: str) -> str:
        """`/Root/archive/a/b.jpg` -> `a/b.jpg`, counting components (case may differ)."""
        depth = len(self._full(area).split("/"))
        return "/".join(path.split("/")[depth:])

    @contextlib.contextmanager
    def _edge(self, action: str, path: str | None = None) -> Iterator[None]:
        where = f"{action} {path}" if path else action
        try:
            self._use_namespace()
            yield
        except sdk_errors.PathRootError:  # `invalid_root`: the account joined or left a team
            try:
                self._use_namespace(again=True)
            except VENDOR_ERRORS as exc:
                raise translate_error(exc, where) from None
            message = (
                f"the Dropbox root namespace changed on {where} (the account joined or left a team)"
            )
            if action in ("list", "longpoll"):  # the cursor was made in the old namespace
                raise CursorResetError(message) from None
            raise TransientError(message) from None
        except VENDOR_ERRORS as exc:
            raise translate_error(exc, where) from None
        finally:
            self._note_token()

    def _use_namespace(self, again: bool = False) -> Namespace:
        """Read the account's namespaces (once, or `again` after `invalid_root`)."""
        with self._namespace_lock:
            if self.namespace is None or again:
                old = self.namespace
                self.namespace, self._client = select_namespace(self._base, self.settings.path_root)
                if old is not None and old.id != self.namespace.id:
                    log.info(
                        "the Dropbox namespace in use is now %s (was %s)",
                        self.namespace.id,
                        old.id,
                        extra={"event": "dropbox.namespace_changed", "namespace": old.id},
                    )
            return self.namespace

    def _note_token(self) -> None:
        token = getattr(self._client, "_oauth2_access_token", None)
        if isinstance(token, str) and token != self._known_token:
            register_secret(token)
            self._known_token = token
            log.debug("Dropbox access token refreshed", extra={"event": "dropbox.token_refreshed"})

    # ------------------------------------------------------------------ reading

    def inspect_root(self) -> RootReport:
        """Where `root` is looked for, whether it is there, and if not, whether the
        account's other namespace has a folder of that name (for `cutoutd check`)."""
        elsewhere = None
        with self._edge("inspect", self.root or "/"):
            namespace = self._use_namespace()
            exists = self._is_folder(self._client, self.root)
            other = None if exists or namespace.other_id is None else namespace
            if other is not None and self._is_folder(other_client(self._base, other), self.root):
                elsewhere = "home" if namespace.kind == "root" else "root"
        return RootReport(self.root or "/", f"Dropbox {namespace.describe()}", exists, elsewhere)

    @staticmethod
    def _is_folder(client: Any, path: str) -> bool:
        if not path:
            return True
        try:
            return isinstance(client.files_get_metadata(path), sdk_files.FolderMetadata)
        except sdk_errors.ApiError as exc:
            if "not_found" in tag_chain(exc.error):
                return False
            raise

    def ensure_layout(self) -> None:
        for area in Area:
            path = self._full(area)
            with self._edge("create folder", path):
                try:
                    self._client.files_create_folder_v2(path)
                except sdk_errors.ApiError as exc:
                    tags = tag_chain(exc.error)
                    if tags[-2:] == ["conflict", "folder"]:
                        continue
                    if "conflict" in tags:
                        problem = f"source.root: {path} is a file in Dropbox, not a folder"
                        raise ConfigError([problem]) from None
                    raise
                log.info(
                    "created %s", path, extra={"event": "storage.folder_created", "path": path}
                )

    def list_changes(self, cursor: str | None) -> ChangeBatch:
        folder = self._full(Area.INPUT)
        with self._edge("list", folder):
            namespace = self._use_namespace()
            try:
                if cursor is None:
                    result = self._client.files_list_folder(
                        folder, recursive=self.recursive, include_non_downloadable_files=False
                    )
                else:
                    result = self._client.files_list_folder_continue(namespace.untag(cursor))
            except sdk_errors.ApiError as exc:
                if cursor is not None and (exc.error.is_reset() or exc.error.is_path()):
                    raise CursorResetError(f"the Dropbox cursor for {folder} was reset") from None
                if cursor is None and exc.error.is_path():
                    raise TransientError(f"{folder} is missing in Dropbox") from None
                raise
        changes = tuple(c for c in map(self._change, result.entries) if c is not None)
        return ChangeBatch(changes, namespace.tag(result.cursor), bool(result.has_more))

    def _change(self, entry: Any) -> Change | None:
        if not entry.path_lower or not entry.path_display:
            return None
        relative = self._relative(Area.INPUT, entry.path_display)
        relative_lower = self._relative(Area.INPUT, entry.path_lower)
        if not relative or (not self.recursive and "/" in relative):
            return None
        if any(is_ignored_name(part) for part in relative.split("/")):
            return None  # hidden or temporary, like the local storage (folders included)
        if isinstance(entry, sdk_files.DeletedMetadata):
            return DeletedEntry(relative_lower)
        if not isinstance(entry, sdk_files.FileMetadata) or entry.is_downloadable is False:
            return None
        modified: datetime | None = entry.server_modified
        return RemoteFile(
            path=relative,
            path_lower=relative_lower,
            rev=entry.rev,
            size=entry.size,
            content_hash=entry.content_hash or "",
            modified_at=modified.replace(tzinfo=UTC) if modified else None,
        )

    def read(self, file: RemoteFile) -> bytes:
        path = self._full(Area.INPUT, file.path)
        with self._edge("download", path):
            metadata, response = self._client.files_download(path)
            with contextlib.closing(response):
                if metadata.rev != file.rev:
                    raise ItemGoneError(f"{file.path} was replaced (rev {metadata.rev})")
                data: bytes = response.content
        if metadata.content_hash and content_hash_bytes(data) != metadata.content_hash:
            raise TransientError(f"download of {file.path} arrived incomplete")
        return data

    def _metadata(self, path: str) -> Any:
        """The item's metadata, or None when nothing is there."""
        try:
            with self._edge("get metadata", path):
                return self._client.files_get_metadata(path)
        except ItemGoneError:
            return None

    def current_rev(self, path: str) -> str | None:
        metadata = self._metadata(self._full(Area.INPUT, path))
        return metadata.rev if isinstance(metadata, sdk_files.FileMetadata) else None

    def exists(self, area: Area, path: str) -> bool:
        return self._metadata(self._full(area, path)) is not None

    def temporary_link(self, file: RemoteFile) -> str:
        path = self._full(Area.INPUT, file.path)
        with self._edge("temporary link", path):
            result = self._client.files_get_temporary_link(path)
        if result.metadata.rev != file.rev:
            raise ItemGoneError(f"{file.path} was replaced (rev {result.metadata.rev})")
        return str(result.link)

    def input_thumbnail(self, file: RemoteFile) -> bytes | None:
        """Dropbox's thumbnail of exactly this revision (`files/get_thumbnail_v2` on
        `rev:`): WebP with transparency kept, at most 256 px a side. None when Dropbox
        renders none for it (not a picture it knows, over 20 MB) or the revision is gone."""
        path = self._full(Area.INPUT, file.path)
        with self._edge("thumbnail", path):
            try:
                _, response = self._client.files_get_thumbnail_v2(
                    sdk_files.PathOrLink.path(f"rev:{file.rev}"),
                    format=sdk_files.ThumbnailFormat.webp,
                    size=sdk_files.ThumbnailSize.w256h256,
                    preserve_transparency=True,
                )
            except sdk_errors.ApiError as exc:
                if NO_THUMBNAIL.intersection(tag_chain(exc.error)):
                    return None
                raise
            with contextlib.closing(response):
                data: bytes = response.content
        return data

    # ------------------------------------------------------------------ writing

    def write(self, area: Area, path: str, data: bytes) -> str:
        target = self._full(area, path)
        with self._edge("upload", target):
            if len(data) <= self.upload_limit:
                metadata = self._client.files_upload(
                    data, target, mode=sdk_files.WriteMode.overwrite, mute=True
                )
            else:
                metadata = self._upload_in_session(data, target)
        return self._relative(area, metadata.path_display)

    def _upload_in_session(self, data: bytes, target: str) -> Any:
        chunk = self.chunk_size
        started = self._client.files_upload_session_start(data[:chunk])
        offset = min(chunk, len(data))
        while len(data) - offset > chunk:
            cursor = sdk_files.UploadSessionCursor(started.session_id, offset)
            try:
                self._client.files_upload_session_append_v2(data[offset : offset + chunk], cursor)
            except sdk_errors.ApiError as exc:  # an earlier try landed but its answer was lost
                if not exc.error.is_incorrect_offset():
                    raise
                offset = exc.error.get_incorrect_offset().correct_offset
                continue
            offset += chunk
        cursor = sdk_files.UploadSessionCursor(started.session_id, offset)
        commit = sdk_files.CommitInfo(target, mode=sdk_files.WriteMode.overwrite, mute=True)
        return self._client.files_upload_session_finish(data[offset:], cursor, commit)

    def _delete_if_present(self, path: str) -> None:
        try:
            self._client.files_delete_v2(path)
        except sdk_errors.ApiError as exc:
            if "not_found" not in tag_chain(exc.error):
                raise

    def copy(self, area: Area, source: str, target: str) -> str:
        destination = self._full(area, target)
        with self._edge("copy", destination):
            self._delete_if_present(destination)
            metadata = self._client.files_copy_v2(self._full(area, source), destination).metadata
        return self._relative(area, metadata.path_display)

    def relocate(self, file: RemoteFile, area: Area) -> str:
        source = self._full(Area.INPUT, file.path)
        with self._edge("move", source):
            result = self._client.files_move_v2(
                source, self._full(area, file.path), autorename=True
            )
        return self._relative(area, result.metadata.path_display)

    def find_relocated(self, file: RemoteFile, area: Area) -> str | None:
        wanted, found = PurePosixPath(file.path), None
        for number in range(1000):
            suffix = f" ({number})" if number else ""
            name = wanted.with_name(f"{wanted.stem}{suffix}{wanted.suffix}").as_posix()
            metadata = self._metadata(self._full(area, name))
            if metadata is None:
                break
            if isinstance(metadata, sdk_files.FileMetadata) and (
                metadata.content_hash == file.content_hash
            ):
                found = self._relative(area, metadata.path_display)
        return found

    def relocate_many(self, files: Sequence[RemoteFile], area: Area) -> list[str | Exception]:
        """`relocate` for many inputs in batches; one result (path or error) per file."""
        results: list[str | Exception] = []
        for start in range(0, len(files), BATCH_SIZE):
            batch = files[start : start + BATCH_SIZE]
            entries = [
                sdk_files.RelocationPath(self._full(Area.INPUT, f.path), self._full(area, f.path))
                for f in batch
            ]
            for file, entry in zip(batch, self._move_batch(entries, area), strict=True):
                if entry.is_success():
                    results.append(self._relative(area, entry.get_success().path_display))
                else:
                    where = f"move {self._full(Area.INPUT, file.path)}"
                    results.append(api_error(entry.get_failure(), where))
        return results

    def _move_batch(self, entries: list[Any], area: Area) -> list[Any]:
        where, delay = self._full(area), 0.1
        with self._edge("move batch", where):
            launch = self._client.files_move_batch_v2(entries, autorename=True)
            if launch.is_complete():
                return list(launch.get_complete().entries)
            job_id = launch.get_async_job_id()
            while not self._closing.wait(delay):
                try:
                    status = self._client.files_move_batch_check_v2(job_id)
                except sdk_errors.RateLimitError as exc:  # the moves go on: ask again later
                    delay = float(exc.backoff or 1.0)
                    continue
                if status.is_complete():
                    return list(status.get_complete().entries)
                delay = min(delay * 2, 5.0)
        raise TransientError(f"stopped while Dropbox was moving files into {where}")

    def restore(self, area: Area, path: str, to_path: str) -> str:
        source = self._full(area, path)
        with self._edge("move", source):
            result = self._client.files_move_v2(
                source, self._full(Area.INPUT, to_path), autorename=True
            )
        return self._relative(Area.INPUT, result.metadata.path_display)

    def delete(self, file: RemoteFile) -> None:
        """Delete exactly this revision (`parent_rev`); a newer one stays and is reported."""
        path = self._full(Area.INPUT, file.path)
        try:
            with self._edge("delete", path):
                self._client.files_delete_v2(path, parent_rev=file.rev)
        except (ItemGoneError, PermanentItemError):
            current = self.current_rev(file.path)
            if current is None:
                return
            if current != file.rev:
                raise ItemGoneError(f"{file.path} was replaced (rev {current})") from None
            raise

    # ------------------------------------------------------------------ change notification

    def wait_for_changes(self, cursor: str, timeout: float, stop: threading.Event) -> bool:
        """Longpoll (notify host, no auth). Blocks at most the longpoll timeout plus a grace
        period; a client-side timeout counts as "no change" (the cursor is not consumed)."""
        if stop.is_set():
            return False
        seconds = min(max(int(timeout), 30), 480)
        with self._edge("longpoll"):
            argument = sdk_files.ListFolderLongpollArg(self._use_namespace().untag(cursor), seconds)
            try:
                result = self._client.request(
                    sdk_files.list_folder_longpoll,
                    "files",
                    argument,
                    None,
                    timeout=seconds + LONGPOLL_GRACE,
                )
            except requests.ReadTimeout:
                return False
            except sdk_errors.ApiError as exc:
                if exc.error.is_reset():
                    raise CursorResetError("the Dropbox cursor was reset (longpoll)") from None
                raise
        if result.backoff:
            stop.wait(result.backoff)
        return bool(result.changes)
