"""DropboxStorage against FakeDropbox through the real `dropbox` SDK.

In-process tests use recipe A (a URL-rewriting session); `test_recipe_b_*` runs the
adapter in a subprocess aimed at the HTTPS fake by the SDK's host variables and
REQUESTS_CA_BUNDLE, with credentials from the environment.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import pytest
import requests
from PIL import Image

from daemon.config import DropboxSettings
from daemon.errors import (
    AuthError,
    ConfigError,
    CursorResetError,
    ItemGoneError,
    RateLimitedError,
    TransientError,
    UnreachableError,
)
from daemon.models import Area, ChangeBatch, DeletedEntry, RemoteFile
from daemon.secrets import redact
from daemon.storage.dropbox import DropboxCredentials, DropboxStorage, authorize_dropbox
from tests.fakes.dropbox_server import FakeDropbox

pytest_plugins = ["tests.fakes.dropbox_fixtures"]

REPO = Path(__file__).resolve().parents[2]
ROOT = "/RemoveBGProcess"  # the root that the fixtures' storages use
INPUT = f"{ROOT}/input"
StorageFactory = Callable[..., DropboxStorage]


def list_all(storage: DropboxStorage, cursor: str | None = None) -> tuple[list[object], str]:
    """Every page, as the pipeline would read them."""
    changes: list[object] = []
    batch = ChangeBatch((), cursor or "", has_more=True)
    first = True
    while batch.has_more:
        batch = storage.list_changes(cursor if first else batch.cursor)
        first = False
        changes.extend(batch.changes)
    return changes, batch.cursor


def files_by_path(changes: list[object]) -> dict[str, RemoteFile]:
    return {c.path: c for c in changes if isinstance(c, RemoteFile)}


def test_key_and_description(dropbox_storage: DropboxStorage) -> None:
    assert dropbox_storage.key == "dropbox:/removebgprocess"
    assert dropbox_storage.describe() == "Dropbox folder /RemoveBGProcess"


def test_listing_pages_and_filters(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    fake_dropbox.page_size = 2
    for name in ("a.jpg", "b.png", "c.jpg", ".hidden.jpg", "d.jpg.part", "~$lock.jpg"):
        fake_dropbox.put_file(f"{INPUT}/{name}", name.encode())
    fake_dropbox.put_file(f"{INPUT}/sub/deep.jpg", b"deep")  # not recursive
    first = dropbox_storage.list_changes(None)
    assert first.has_more and len(first.changes) <= 2
    changes, _ = list_all(dropbox_storage)
    found = files_by_path(changes)
    assert sorted(found) == ["a.jpg", "b.png", "c.jpg"]
    a = found["a.jpg"]
    meta = fake_dropbox.metadata(f"{INPUT}/a.jpg")
    assert meta is not None
    assert (a.rev, a.size, a.content_hash) == (meta["rev"], 5, meta["content_hash"])
    assert a.modified_at is not None and a.modified_at.tzinfo == UTC


def test_continue_reports_new_modified_and_deleted(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    fake_dropbox.put_file(f"{INPUT}/Keep.JPG", b"1")
    fake_dropbox.put_file(f"{INPUT}/change.jpg", b"1")
    fake_dropbox.put_file(f"{INPUT}/gone.jpg", b"1")
    _, cursor = list_all(dropbox_storage)
    assert list_all(dropbox_storage, cursor)[0] == []
    fake_dropbox.put_file(f"{INPUT}/change.jpg", b"2")
    fake_dropbox.delete(f"{INPUT}/gone.jpg")
    fake_dropbox.put_file(f"{INPUT}/New File.jpg", b"3")
    fake_dropbox.put_file(f"{ROOT}/output/ignored.png", b"4")
    changes, _ = list_all(dropbox_storage, cursor)
    assert DeletedEntry("gone.jpg") in changes
    found = files_by_path(changes)
    assert sorted(found) == ["New File.jpg", "change.jpg"]
    assert found["New File.jpg"].path_lower == "new file.jpg"
    assert found["change.jpg"].rev == fake_dropbox.metadata(f"{INPUT}/change.jpg")["rev"]  # type: ignore[index]


def test_cursor_reset_raises(fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage) -> None:
    _, cursor = list_all(dropbox_storage)
    fake_dropbox.reset_cursors()
    with pytest.raises(CursorResetError):
        dropbox_storage.list_changes(cursor)
    with pytest.raises(CursorResetError):
        dropbox_storage.wait_for_changes(cursor, 30, threading.Event())
    assert list_all(dropbox_storage)[0] == []  # listing again from scratch works


def test_recursive_mode_and_odd_names(
    fake_dropbox: FakeDropbox, storage_factory: StorageFactory
) -> None:
    storage = storage_factory(recursive=True)
    names = ["a/b/x.jpg", "Ünïcödé Folder/Mixed Case #1.JPG", "top level.png", "a/.cache/y.jpg"]
    for name in names:
        fake_dropbox.put_file(f"{INPUT}/{name}", name.encode())
    found = files_by_path(list_all(storage)[0])
    assert sorted(found) == sorted(names[:3])  # hidden folders are skipped too
    odd = found["Ünïcödé Folder/Mixed Case #1.JPG"]
    assert odd.path_lower == "ünïcödé folder/mixed case #1.jpg"
    assert storage.read(odd) == names[1].encode()
    assert storage.relocate(odd, Area.ARCHIVE) == "Ünïcödé Folder/Mixed Case #1.JPG"
    assert f"{ROOT}/archive/Ünïcödé Folder/Mixed Case #1.JPG" in fake_dropbox.files_under(ROOT)


def test_read_exact_revision(fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage) -> None:
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"first")
    file = files_by_path(list_all(dropbox_storage)[0])["x.jpg"]
    assert dropbox_storage.read(file) == b"first"
    assert dropbox_storage.current_rev("x.jpg") == file.rev
    link = dropbox_storage.temporary_link(file)
    with requests.get(link, timeout=5) as response:
        assert response.content == b"first"
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"second")
    with pytest.raises(ItemGoneError):
        dropbox_storage.read(file)
    with pytest.raises(ItemGoneError):
        dropbox_storage.temporary_link(file)
    fake_dropbox.delete(f"{INPUT}/x.jpg")
    with pytest.raises(ItemGoneError):
        dropbox_storage.read(file)
    assert dropbox_storage.current_rev("x.jpg") is None


def test_input_thumbnail_is_dropboxs_of_exactly_that_revision(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    """A small WebP of the revision listed, even once the file was replaced (it is asked
    right after that revision's outputs are written); None for what Dropbox cannot render."""
    picture = Image.new("RGB", (1024, 512), (10, 120, 200))
    data = io.BytesIO()
    picture.save(data, "JPEG")
    fake_dropbox.put_file(f"{INPUT}/x.jpg", data.getvalue())
    fake_dropbox.put_file(f"{INPUT}/x.txt", b"not a picture")
    found = files_by_path(list_all(dropbox_storage)[0])
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"replaced meanwhile")

    thumbnail = dropbox_storage.input_thumbnail(found["x.jpg"])
    assert thumbnail is not None
    image = Image.open(io.BytesIO(thumbnail))
    assert (image.format, image.size) == ("WEBP", (256, 128))
    red, green, blue = image.convert("RGB").getpixel((5, 5))
    assert abs(red - 10) < 8 and abs(green - 120) < 8 and abs(blue - 200) < 8
    assert dropbox_storage.input_thumbnail(found["x.txt"]) is None
    assert fake_dropbox.counts["files/get_thumbnail_v2"] == 2


def test_write_overwrites(fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage) -> None:
    assert dropbox_storage.write(Area.OUTPUT, "sub/x.png", b"one") == "sub/x.png"
    assert dropbox_storage.write(Area.OUTPUT, "sub/x.png", b"two") == "sub/x.png"
    assert fake_dropbox.files_under(f"{ROOT}/output") == {f"{ROOT}/output/sub/x.png": b"two"}
    assert dropbox_storage.exists(Area.OUTPUT, "sub/X.PNG")
    assert not dropbox_storage.exists(Area.OUTPUT, "nope.png")


def test_large_write_goes_through_an_upload_session(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    fake_dropbox.max_request_bytes = 400  # like Dropbox's 150 MiB per call, scaled down
    dropbox_storage.upload_limit = 400
    dropbox_storage.chunk_size = 300
    data = bytes(range(256)) * 4  # 1024 bytes: start 300, append 300, append 300, finish 124
    assert dropbox_storage.write(Area.OUTPUT, "big.png", data) == "big.png"
    assert fake_dropbox.files_under(f"{ROOT}/output") == {f"{ROOT}/output/big.png": data}
    assert fake_dropbox.counts["files/upload_session/start"] == 1
    assert fake_dropbox.counts["files/upload_session/append_v2"] == 2
    assert fake_dropbox.counts["files/upload_session/finish"] == 1
    assert fake_dropbox.counts["files/upload"] == 0


def test_relocate_with_conflicts(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    fake_dropbox.put_file(f"{ROOT}/archive/x.jpg", b"older")
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"newer")
    file = files_by_path(list_all(dropbox_storage)[0])["x.jpg"]
    assert dropbox_storage.relocate(file, Area.ARCHIVE) == "x (1).jpg"
    assert fake_dropbox.files_under(INPUT) == {}
    with pytest.raises(ItemGoneError):
        dropbox_storage.relocate(file, Area.ARCHIVE)
    assert dropbox_storage.restore(Area.ARCHIVE, "x (1).jpg", "x.jpg") == "x.jpg"
    assert fake_dropbox.files_under(INPUT) == {f"{INPUT}/x.jpg": b"newer"}


def test_relocate_many(fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        fake_dropbox.put_file(f"{INPUT}/{name}", name.encode())
    fake_dropbox.put_file(f"{ROOT}/failed/b.jpg", b"earlier failure")
    found = files_by_path(list_all(dropbox_storage)[0])
    ghost = RemoteFile("ghost.jpg", "ghost.jpg", "0123456789", 1, "0" * 64)
    results = dropbox_storage.relocate_many(
        [found["a.jpg"], found["b.jpg"], ghost, found["c.jpg"]], Area.FAILED
    )
    assert results[:2] == ["a.jpg", "b (1).jpg"] and results[3] == "c.jpg"
    assert isinstance(results[2], ItemGoneError)
    assert dropbox_storage.relocate_many([], Area.FAILED) == []
    assert fake_dropbox.counts["files/move_batch/check_v2"] >= 1


def test_copy_replaces_and_delete_checks_rev(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    dropbox_storage.write(Area.OUTPUT, "a.png", b"a")
    dropbox_storage.write(Area.OUTPUT, "b.png", b"b")
    assert dropbox_storage.copy(Area.OUTPUT, "a.png", "b.png") == "b.png"
    assert fake_dropbox.files_under(f"{ROOT}/output")[f"{ROOT}/output/b.png"] == b"a"
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"1")
    file = files_by_path(list_all(dropbox_storage)[0])["x.jpg"]
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"2")
    with pytest.raises(ItemGoneError):
        dropbox_storage.delete(file)  # a newer revision is not deleted
    assert f"{INPUT}/x.jpg" in fake_dropbox.files_under(INPUT)
    newer = files_by_path(list_all(dropbox_storage)[0])["x.jpg"]
    dropbox_storage.delete(newer)
    assert fake_dropbox.files_under(INPUT) == {}
    dropbox_storage.delete(newer)  # already gone: nothing to do


def test_ensure_layout(fake_dropbox: FakeDropbox, storage_factory: StorageFactory) -> None:
    storage = storage_factory(layout=False)
    storage.ensure_layout()
    storage.ensure_layout()
    for area in Area:
        assert fake_dropbox.metadata(f"{ROOT}/{area.value}") is not None
    fake_dropbox.put_file("/Other/input", b"a file where a folder belongs")
    with pytest.raises(ConfigError, match="is a file"):
        storage_factory(root="/Other")


def test_longpoll_wakes_soon_after_a_change(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    fake_dropbox.longpoll_max_wait = 10  # a safety net; the change must come first
    _, cursor = list_all(dropbox_storage)
    stop = threading.Event()
    outcome: list[tuple[bool, float]] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(
            (dropbox_storage.wait_for_changes(cursor, 30, stop), time.monotonic())
        )
    )
    waiter.start()
    time.sleep(0.5)
    put_at = time.monotonic()
    fake_dropbox.put_file(f"{INPUT}/wake.jpg", b"w")
    waiter.join(5)
    changed, returned_at = outcome[0]
    latency = returned_at - put_at
    print(f"\nlongpoll latency after put_file: {latency * 1000:.1f} ms")
    assert changed and latency < 2.0


def test_longpoll_quiet_backoff_and_stop(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    _, cursor = list_all(dropbox_storage)
    fake_dropbox.longpoll_max_wait = 0.2
    stop = threading.Event()
    assert dropbox_storage.wait_for_changes(cursor, 30, stop) is False
    fake_dropbox.longpoll_backoff = 1
    started = time.monotonic()
    assert dropbox_storage.wait_for_changes(cursor, 30, stop) is False
    assert time.monotonic() - started >= 1.0  # honoured the backoff
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    dropbox_storage.wait_for_changes(cursor, 30, stop)  # the backoff wait ends on stop
    assert time.monotonic() - started < 0.9
    assert dropbox_storage.wait_for_changes(cursor, 30, stop) is False


def test_revoked_refresh_token_stops_at_once(
    fake_dropbox: FakeDropbox, storage_factory: StorageFactory
) -> None:
    fake_dropbox.revoke_refresh_token()
    started = time.monotonic()
    with pytest.raises(AuthError) as caught:
        storage_factory()
    assert time.monotonic() - started < 2.0
    assert "cutoutd auth dropbox" in str(caught.value)
    assert fake_dropbox.refresh_token not in str(caught.value)
    assert fake_dropbox.counts["oauth2/token"] == 1


def test_wrong_app_secret_is_an_auth_error(
    fake_dropbox: FakeDropbox, storage_factory: StorageFactory
) -> None:
    with pytest.raises(AuthError, match="app key, secret or refresh token") as caught:
        storage_factory(app_secret="not-the-secret")
    assert "not-the-secret" not in str(caught.value)


def test_rate_limits_become_rate_limited_error(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    fake_dropbox.rate_limit(1, retry_after=7, routes=["files/list_folder"])
    with pytest.raises(RateLimitedError) as caught:
        dropbox_storage.list_changes(None)
    assert caught.value.retry_after == 7
    fake_dropbox.rate_limit(1, retry_after=4, body="text", routes=["files/upload"])
    with pytest.raises(RateLimitedError) as caught:
        dropbox_storage.write(Area.OUTPUT, "x.png", b"x")
    assert caught.value.retry_after == 4
    fake_dropbox.lock_contention(1, routes=["files/move_v2"])
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"x")
    file = files_by_path(list_all(dropbox_storage)[0])["x.jpg"]
    with pytest.raises(RateLimitedError, match="too_many_write_operations"):
        dropbox_storage.relocate(file, Area.ARCHIVE)
    fake_dropbox.lock_contention(1, routes=["files/move_batch_v2"])
    assert isinstance(dropbox_storage.relocate_many([file], Area.ARCHIVE)[0], RateLimitedError)


def test_a_503_with_retry_after_is_a_rate_limit(
    fake_dropbox: FakeDropbox, storage_factory: StorageFactory
) -> None:
    storage = storage_factory(settings=DropboxSettings(timeout=5, max_retries_on_error=0))
    fake_dropbox.server_errors(1, status=503, retry_after=3, routes=["files/upload"])
    with pytest.raises(RateLimitedError, match="busy") as caught:
        storage.write(Area.OUTPUT, "x.png", b"x")
    assert caught.value.retry_after == 3
    fake_dropbox.server_errors(1, status=503, routes=["files/upload"])  # no Retry-After
    with pytest.raises(TransientError) as plain:
        storage.write(Area.OUTPUT, "x.png", b"x")
    assert not isinstance(plain.value, RateLimitedError)


def test_sdk_retries_rate_limits_when_configured(
    fake_dropbox: FakeDropbox, storage_factory: StorageFactory
) -> None:
    settings = DropboxSettings(timeout=10, max_retries_on_error=0, max_retries_on_rate_limit=2)
    storage = storage_factory(settings=settings)
    fake_dropbox.rate_limit(2, retry_after=0, routes=["files/upload"])
    assert storage.write(Area.OUTPUT, "x.png", b"x") == "x.png"


def test_server_errors_and_unreachable_are_transient(
    fake_dropbox: FakeDropbox, storage_factory: StorageFactory
) -> None:
    storage = storage_factory(settings=DropboxSettings(timeout=5, max_retries_on_error=0))
    fake_dropbox.server_errors(1, status=503)
    with pytest.raises(TransientError):
        storage.list_changes(None)
    fake_dropbox.stop()
    with pytest.raises(TransientError, match="cannot reach Dropbox"):
        storage.list_changes(None)


def test_no_secret_in_requests_or_errors(
    fake_dropbox: FakeDropbox, dropbox_storage: DropboxStorage
) -> None:
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"x")
    file = files_by_path(list_all(dropbox_storage)[0])["x.jpg"]
    link = dropbox_storage.temporary_link(file)
    tokens = fake_dropbox.access_tokens
    assert tokens
    for seen in fake_dropbox.requests:
        assert not any(token in seen.text() for token in tokens)
    for token in tokens:  # registered for redaction as soon as the SDK got it
        assert token not in redact(f"header {token}")
    fake_dropbox.put_file(f"{INPUT}/x.jpg", b"y")
    with pytest.raises(ItemGoneError) as caught:
        dropbox_storage.temporary_link(file)
    assert link not in str(caught.value)


def test_authorize_dropbox(fake_dropbox: FakeDropbox, storage_factory: StorageFactory) -> None:
    session = fake_dropbox.session()
    try:
        lines = authorize_dropbox(fake_dropbox.app_key, None, fake_dropbox.approve, session)
        assert set(lines) == {"DROPBOX_APP_KEY", "DROPBOX_REFRESH_TOKEN"}
        storage = storage_factory(refresh_token=lines["DROPBOX_REFRESH_TOKEN"], app_secret=None)
        assert storage.list_changes(None).changes == ()
        with_secret = authorize_dropbox(
            fake_dropbox.app_key, "s3cret", fake_dropbox.approve, session
        )
        assert with_secret["DROPBOX_APP_SECRET"] == "s3cret"
        with pytest.raises(AuthError, match="did not accept that authorization code"):
            authorize_dropbox(fake_dropbox.app_key, None, lambda url: "mistyped", session)
        with pytest.raises(AuthError, match="no authorization code"):
            authorize_dropbox(fake_dropbox.app_key, None, lambda url: "  ", session)
    finally:
        session.close()


def test_credentials_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DROPBOX_APP_KEY", "DROPBOX_APP_SECRET", "DROPBOX_REFRESH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(AuthError, match="DROPBOX_APP_KEY and DROPBOX_REFRESH_TOKEN"):
        DropboxCredentials.from_environment()
    monkeypatch.setenv("DROPBOX_APP_KEY", "key")
    (tmp_path / "DROPBOX_REFRESH_TOKEN").write_text("refresh-from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    credentials = DropboxCredentials.from_environment()
    assert (credentials.app_key, credentials.app_secret) == ("key", None)
    assert credentials.refresh_token == "refresh-from-credential"
    assert "refresh-from-credential" not in repr(credentials)


RECIPE_B_SCRIPT = """
import json
from daemon.config import DropboxSettings
from daemon.models import Area
from daemon.storage.dropbox import DropboxCredentials, DropboxStorage
storage = DropboxStorage("/RemoveBGProcess", False, DropboxSettings(max_retries_on_rate_limit=0),
                         DropboxCredentials.from_environment())
storage.ensure_layout()
batch = storage.list_changes(None)
file = batch.changes[0]
storage.write(Area.OUTPUT, "x.png", storage.read(file)[::-1])
print(json.dumps({"path": file.path, "archived": storage.relocate(file, Area.ARCHIVE)}))
storage.close()
"""


def test_recipe_b_adapter_in_a_subprocess() -> None:
    """The adapter's own session honours DROPBOX_API_*_HOST and REQUESTS_CA_BUNDLE."""
    with FakeDropbox(https=True) as fake:
        fake.put_file(f"{INPUT}/Photo 1.jpg", b"abc")
        env = {**os.environ, **fake.daemon_environment()}
        done = subprocess.run(
            [sys.executable, "-c", RECIPE_B_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"path": "Photo 1.jpg", "archived": "Photo 1.jpg"}
        assert fake.files_under(ROOT) == {
            f"{ROOT}/archive/Photo 1.jpg": b"abc",
            f"{ROOT}/output/x.png": b"cba",
        }


def test_refused_or_reset_connections_are_unreachable_not_timeouts(
    fake_dropbox: FakeDropbox, storage_factory: StorageFactory
) -> None:
    """Unreachable (the pipeline keeps an item's last attempt for later) only when no answer
    could come at all; a slow answer stays an ordinary transient error."""
    storage = storage_factory(settings=DropboxSettings(timeout=0.5, max_retries_on_error=0))
    fake_dropbox.reset_connections(1, routes=["files/list_folder"])
    with pytest.raises(UnreachableError, match="cannot reach Dropbox"):
        storage.list_changes(None)
    fake_dropbox.slow(1.0, routes=["files/list_folder"], count=1)
    with pytest.raises(TransientError) as caught:
        storage.list_changes(None)
    assert not isinstance(caught.value, UnreachableError)
    fake_dropbox.go_offline()
    with pytest.raises(UnreachableError):
        storage.list_changes(None)
