"""The Dropbox fake's own tests, through the real `dropbox` SDK (recipe A unless noted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dropbox
import pytest
import requests
from dropbox import exceptions as sdk_errors
from dropbox import files

from tests.fakes.dropbox_server import FakeDropbox, RewritingSession

pytest_plugins = ["tests.fakes.dropbox_fixtures"]

ABC_HASH = "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358"
REPO = Path(__file__).resolve().parents[2]


def names(entries: list[Any]) -> list[str]:
    return [e.path_display for e in entries]


def test_metadata_is_shaped_like_dropbox(fake_dropbox: FakeDropbox) -> None:
    fake_dropbox.put_file("/Docs/abc.txt", b"abc")
    body = {"path": "/docs/ABC.TXT"}
    token = requests.post(
        f"{fake_dropbox.url}/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": fake_dropbox.refresh_token,
            "client_id": fake_dropbox.app_key,
            "client_secret": fake_dropbox.app_secret,
        },
        timeout=5,
    ).json()["access_token"]
    with requests.post(
        f"{fake_dropbox.url}/2/files/get_metadata",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ) as response:
        assert response.headers["Content-Type"] == "application/json"
        meta = response.json()
    assert token.startswith("sl.")
    assert meta[".tag"] == "file"
    assert meta["path_display"] == "/Docs/abc.txt"
    assert meta["path_lower"] == "/docs/abc.txt"
    assert meta["content_hash"] == ABC_HASH
    assert re.fullmatch(r"[0-9a-f]{9,}", meta["rev"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["server_modified"])


def test_list_folder_pages_honour_limit(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    for n in range(5):
        fake_dropbox.put_file(f"/In/f{n}.jpg", bytes([n]))
    result = sdk_client.files_list_folder("/in", limit=2)
    pages = [names(result.entries)]
    while result.has_more:
        result = sdk_client.files_list_folder_continue(result.cursor)
        pages.append(names(result.entries))
    assert pages == [["/In/f0.jpg", "/In/f1.jpg"], ["/In/f2.jpg", "/In/f3.jpg"], ["/In/f4.jpg"]]
    assert sdk_client.files_list_folder_continue(result.cursor).entries == []


def test_continue_returns_only_changes_since_the_cursor(
    fake_dropbox: FakeDropbox, sdk_client: Any
) -> None:
    fake_dropbox.put_file("/In/keep.jpg", b"1")
    fake_dropbox.put_file("/In/change.jpg", b"1")
    fake_dropbox.put_file("/In/gone.jpg", b"1")
    fake_dropbox.put_file("/In/sub/deep.jpg", b"1")
    cursor = sdk_client.files_list_folder("/In").cursor
    fake_dropbox.put_file("/In/change.jpg", b"2")
    fake_dropbox.delete("/In/gone.jpg")
    fake_dropbox.put_file("/In/new.jpg", b"3")
    fake_dropbox.put_file("/In/sub/deeper.jpg", b"4")  # not a direct child
    fake_dropbox.put_file("/Elsewhere/x.jpg", b"5")
    entries = sdk_client.files_list_folder_continue(cursor).entries
    kinds = {e.path_display: type(e).__name__ for e in entries}
    assert kinds == {
        "/In/change.jpg": "FileMetadata",
        "/In/gone.jpg": "DeletedMetadata",
        "/In/new.jpg": "FileMetadata",
    }
    changed = next(e for e in entries if e.name == "change.jpg")
    assert changed.rev == fake_dropbox.metadata("/in/change.jpg")["rev"]  # type: ignore[index]


def test_recursive_listing_and_latest_cursor(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/In/a/b/x.jpg", b"x")
    listed = sdk_client.files_list_folder("/In", recursive=True).entries
    assert names(listed) == ["/In/a", "/In/a/b", "/In/a/b/x.jpg"]
    latest = sdk_client.files_list_folder_get_latest_cursor("/In", recursive=True).cursor
    assert sdk_client.files_list_folder_continue(latest).entries == []
    fake_dropbox.put_file("/In/a/b/y.jpg", b"y")
    assert names(sdk_client.files_list_folder_continue(latest).entries) == ["/In/a/b/y.jpg"]


def test_root_must_be_empty_string(sdk_client: Any) -> None:
    with pytest.raises(sdk_errors.BadInputError, match="empty string"):
        sdk_client.files_list_folder("/")
    assert sdk_client.files_list_folder("").entries == []


def test_paths_are_case_insensitive_and_keep_unicode(
    fake_dropbox: FakeDropbox, sdk_client: Any
) -> None:
    fake_dropbox.put_file("/In/Ünï #1 Photo.JPG", b"u")
    meta = sdk_client.files_get_metadata("/in/ünï #1 photo.jpg")
    assert meta.path_display == "/In/Ünï #1 Photo.JPG"
    metadata, response = sdk_client.files_download("/IN/ÜNÏ #1 PHOTO.jpg")
    with response:
        assert response.content == b"u"
    assert metadata.rev == meta.rev


def test_cursor_reset(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.make_folder("/In")
    cursor = sdk_client.files_list_folder("/In").cursor
    fake_dropbox.reset_cursors()
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_list_folder_continue(cursor)
    assert caught.value.error.is_reset()
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_list_folder_longpoll(cursor, 30)
    assert caught.value.error.is_reset()


def test_longpoll_wakes_on_change_without_auth(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.make_folder("/In")
    cursor = sdk_client.files_list_folder("/In").cursor
    answers: list[tuple[bool, float]] = []

    def poll() -> None:
        result = sdk_client.files_list_folder_longpoll(cursor, 30)
        answers.append((result.changes, time.monotonic()))

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)
    changed_at = time.monotonic()
    fake_dropbox.put_file("/In/x.jpg", b"x")
    thread.join(5)
    assert answers and answers[0][0] is True
    assert answers[0][1] - changed_at < 1.0
    longpolls = [r for r in fake_dropbox.requests if r.path.endswith("/longpoll")]
    assert longpolls and all("authorization" not in r.headers for r in longpolls)


def test_longpoll_times_out_and_sends_backoff(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.make_folder("/In")
    cursor = sdk_client.files_list_folder("/In").cursor
    fake_dropbox.longpoll_max_wait = 0.2
    fake_dropbox.longpoll_backoff = 5
    result = sdk_client.files_list_folder_longpoll(cursor, 30)
    assert (result.changes, result.backoff) == (False, 5)


def test_access_token_refresh(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.make_folder("/In")
    sdk_client.files_get_metadata("/In")
    assert fake_dropbox.counts["oauth2/token"] == 1
    fake_dropbox.expire_access_tokens()
    sdk_client.files_get_metadata("/In")  # 401 expired_access_token -> refresh -> retry
    assert fake_dropbox.counts["oauth2/token"] == 2
    assert fake_dropbox.counts["files/get_metadata"] == 3


def test_revoked_refresh_token_is_invalid_grant(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.revoke_refresh_token()
    with pytest.raises(sdk_errors.AuthError) as caught:
        sdk_client.files_list_folder("")
    assert caught.value.error.is_invalid_access_token()
    assert fake_dropbox.counts["oauth2/token"] == 1


def test_forgotten_access_tokens_and_a_reinstated_refresh_token(
    fake_dropbox: FakeDropbox, sdk_client: Any
) -> None:
    """401 `invalid_access_token` is not refreshed by the SDK (only `expired_` is); a
    revoked refresh token works again once reinstated."""
    fake_dropbox.make_folder("/In")
    sdk_client.files_get_metadata("/In")
    first = fake_dropbox.access_tokens
    fake_dropbox.forget_access_tokens()
    with pytest.raises(sdk_errors.AuthError) as caught:
        sdk_client.files_get_metadata("/In")
    assert caught.value.error.is_invalid_access_token()
    assert fake_dropbox.counts["oauth2/token"] == 1
    assert fake_dropbox.access_tokens == first  # still known as secrets

    fake_dropbox.revoke_refresh_token()
    fake_dropbox.reinstate_refresh_token()
    fresh = dropbox.Dropbox(
        oauth2_refresh_token=fake_dropbox.refresh_token,
        app_key=fake_dropbox.app_key,
        app_secret=fake_dropbox.app_secret,
        session=fake_dropbox.session(),
    )
    assert fresh.files_get_metadata("/In").name == "In"
    assert fake_dropbox.counts["oauth2/token"] == 2


def test_rate_limit_json_text_and_write_lock(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.rate_limit(1, retry_after=7)
    with pytest.raises(sdk_errors.RateLimitError) as caught:
        sdk_client.files_list_folder("")
    assert caught.value.backoff == 7
    assert caught.value.error.reason.is_too_many_requests()
    fake_dropbox.rate_limit(1, retry_after=3, body="text")
    with pytest.raises(sdk_errors.RateLimitError) as caught:
        sdk_client.files_list_folder("")
    assert caught.value.backoff == 3
    fake_dropbox.rate_limit(1, reason="too_many_write_operations", routes=["files/upload"])
    with pytest.raises(sdk_errors.RateLimitError) as caught:
        sdk_client.files_upload(b"x", "/x.txt")
    assert caught.value.error.reason.is_too_many_write_operations()
    fake_dropbox.lock_contention(1, routes=["files/upload"])
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_upload(b"x", "/x.txt")
    assert caught.value.error.get_path().reason.is_too_many_write_operations()
    assert sdk_client.files_upload(b"x", "/x.txt").size == 1
    assert fake_dropbox.faulted == {"rate_limit": 3, "lock": 1}


def test_hooks_change_state_between_requests(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/In/x.jpg", b"x")

    def vanish(route: str, arg: Any) -> None:
        if route == "files/download":
            fake_dropbox.delete("/In/x.jpg")

    fake_dropbox.hooks.append(vanish)
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_download("/In/x.jpg")
    assert caught.value.error.get_path().is_not_found()


def test_rate_limit_is_retried_by_the_sdk_when_allowed(fake_dropbox: FakeDropbox) -> None:
    fake_dropbox.rate_limit(2, retry_after=0)
    with dropbox.Dropbox(
        oauth2_refresh_token=fake_dropbox.refresh_token,
        app_key=fake_dropbox.app_key,
        app_secret=fake_dropbox.app_secret,
        session=fake_dropbox.session(),
        max_retries_on_rate_limit=2,
    ) as client:
        assert client.files_list_folder("").entries == []
    assert fake_dropbox.counts["files/list_folder"] == 3


def test_rate_limit_storm_is_probabilistic(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.rate_limit(None, retry_after=0, probability=0.5, routes=["files/get_metadata"])
    fake_dropbox.make_folder("/In")
    outcomes = []
    for _ in range(40):
        try:
            sdk_client.files_get_metadata("/In")
            outcomes.append(True)
        except sdk_errors.RateLimitError:
            outcomes.append(False)
    assert 5 < outcomes.count(False) < 35


def test_server_error_burst(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.server_errors(1, status=503)
    assert sdk_client.files_list_folder("").entries == []  # one retry allowed
    fake_dropbox.server_errors(2, status=500)
    with pytest.raises(sdk_errors.InternalServerError) as caught:
        sdk_client.files_list_folder("")
    assert caught.value.status_code == 500


def test_slow_answers(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.slow(0.4, routes=["files/list_folder"], count=1)
    started = time.monotonic()
    sdk_client.files_list_folder("")
    assert time.monotonic() - started >= 0.4


def test_temporary_link_expires() -> None:
    now = [1_800_000_000.0]
    with FakeDropbox(clock=lambda: now[0], temporary_link_ttl=60) as fake:
        fake.put_file("/In/x.jpg", b"image")
        with dropbox.Dropbox(
            oauth2_refresh_token=fake.refresh_token,
            app_key=fake.app_key,
            app_secret=fake.app_secret,
            session=fake.session(),
        ) as client:
            result = client.files_get_temporary_link("/in/x.jpg")
        assert result.link.startswith(fake.url + "/tl/")
        assert result.metadata.path_display == "/In/x.jpg"
        with requests.get(result.link, timeout=5) as response:
            assert (response.status_code, response.content) == (200, b"image")
        now[0] += 61
        with requests.get(result.link, timeout=5) as response:
            assert response.status_code == 410


def test_move_autorenames_and_conflicts(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/Archive/x.jpg", b"old")
    fake_dropbox.put_file("/Archive/x (1).jpg", b"old")
    fake_dropbox.put_file("/In/x.jpg", b"new")
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_move_v2("/In/x.jpg", "/Archive/x.jpg")
    assert caught.value.error.get_to().get_conflict().is_file()
    moved = sdk_client.files_move_v2("/In/x.jpg", "/Archive/x.jpg", autorename=True)
    assert moved.metadata.path_display == "/Archive/x (2).jpg"
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_move_v2("/In/x.jpg", "/Archive/y.jpg")
    assert caught.value.error.get_from_lookup().is_not_found()


def test_move_batch_and_check(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/In/a.jpg", b"a")
    launch = sdk_client.files_move_batch_v2(
        [
            files.RelocationPath("/In/a.jpg", "/Out/a.jpg"),
            files.RelocationPath("/In/missing.jpg", "/Out/missing.jpg"),
        ],
        autorename=True,
    )
    job = launch.get_async_job_id()
    assert sdk_client.files_move_batch_check_v2(job).is_in_progress()
    entries = sdk_client.files_move_batch_check_v2(job).get_complete().entries
    assert entries[0].get_success().path_display == "/Out/a.jpg"
    failure = entries[1].get_failure().get_relocation_error()
    assert failure.get_from_lookup().is_not_found()
    with pytest.raises(sdk_errors.ApiError):
        sdk_client.files_move_batch_check_v2("dbjid:nope")


def test_copy_delete_and_folders(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/Out/a.png", b"a")
    copied = sdk_client.files_copy_v2("/Out/a.png", "/Out/b.png").metadata
    assert copied.path_display == "/Out/b.png"
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_create_folder_v2("/Out")
    assert caught.value.error.get_path().get_conflict().is_folder()
    deleted = sdk_client.files_delete_v2("/Out/a.png").metadata
    assert deleted.name == "a.png"
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_delete_v2("/Out/a.png")
    assert caught.value.error.get_path_lookup().is_not_found()
    assert set(fake_dropbox.files_under("/out")) == {"/Out/b.png"}


def test_upload_modes(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    first = sdk_client.files_upload(b"one", "/Out/x.png")
    assert sdk_client.files_upload(b"one", "/Out/x.png").rev == first.rev  # identical: no-op
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_upload(b"two", "/Out/x.png")  # mode add
    assert caught.value.error.get_path().reason.get_conflict().is_file()
    renamed = sdk_client.files_upload(b"two", "/Out/x.png", autorename=True)
    assert renamed.path_display == "/Out/x (1).png"
    second = sdk_client.files_upload(b"three", "/Out/X.PNG", mode=files.WriteMode.overwrite)
    assert (second.path_display, second.rev != first.rev) == ("/Out/x.png", True)
    with pytest.raises(sdk_errors.ApiError):
        sdk_client.files_upload(b"four", "/Out/x.png", mode=files.WriteMode.update(first.rev))
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_upload(b"five", "/Out/y.png", content_hash="0" * 64)
    assert caught.value.error.is_content_hash_mismatch()


def test_upload_session(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.max_request_bytes = 4
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_upload(b"0123456789", "/Out/big.bin")
    assert caught.value.error.is_payload_too_large()
    session = sdk_client.files_upload_session_start(b"0123").session_id
    sdk_client.files_upload_session_append_v2(b"4567", files.UploadSessionCursor(session, 4))
    with pytest.raises(sdk_errors.ApiError) as caught:
        sdk_client.files_upload_session_append_v2(b"89", files.UploadSessionCursor(session, 4))
    assert caught.value.error.get_incorrect_offset().correct_offset == 8
    commit = files.CommitInfo("/Out/big.bin", mode=files.WriteMode.overwrite)
    meta = sdk_client.files_upload_session_finish(
        b"89", files.UploadSessionCursor(session, 8), commit
    )
    assert meta.size == 10
    assert fake_dropbox.files_under("/Out") == {"/Out/big.bin": b"0123456789"}


def test_save_url_fetches_and_autorenames(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/In/src.jpg", b"source")
    fake_dropbox.put_file("/Out/dst.jpg", b"already here")
    link = sdk_client.files_get_temporary_link("/In/src.jpg").link
    job = sdk_client.files_save_url("/Out/dst.jpg", link).get_async_job_id()
    deadline = time.monotonic() + 5
    status = sdk_client.files_save_url_check_job_status(job)
    while status.is_in_progress() and time.monotonic() < deadline:
        time.sleep(0.05)
        status = sdk_client.files_save_url_check_job_status(job)
    assert status.get_complete().path_display == "/Out/dst (1).jpg"
    assert fake_dropbox.files_under("/Out")["/Out/dst (1).jpg"] == b"source"
    job = sdk_client.files_save_url("/Out/z.jpg", "http://127.0.0.1:9/none").get_async_job_id()
    for _ in range(100):
        status = sdk_client.files_save_url_check_job_status(job)
        if not status.is_in_progress():
            break
        time.sleep(0.05)
    assert status.get_failed().is_download_failed()


def test_pkce_authorization_code_grant(fake_dropbox: FakeDropbox) -> None:
    flow = dropbox.DropboxOAuth2FlowNoRedirect(
        fake_dropbox.app_key, use_pkce=True, token_access_type="offline"
    )
    flow.requests_session.close()
    flow.requests_session = fake_dropbox.session()
    url = flow.start()
    assert "code_challenge=" in url and "token_access_type=offline" in url
    result = flow.finish(fake_dropbox.approve(url))
    assert result.access_token.startswith("sl.") and result.refresh_token
    with pytest.raises(requests.HTTPError):
        flow.finish("fake-code-wrong")
    other = dropbox.DropboxOAuth2FlowNoRedirect(fake_dropbox.app_key, use_pkce=True)
    other.requests_session.close()
    other.requests_session = flow.requests_session
    code = fake_dropbox.approve(other.start())
    with pytest.raises(requests.HTTPError):
        flow.finish(code)  # the verifier of another flow
    flow.requests_session.close()
    with dropbox.Dropbox(  # a PKCE refresh token needs no app secret
        oauth2_refresh_token=result.refresh_token,
        app_key=fake_dropbox.app_key,
        session=fake_dropbox.session(),
    ) as client:
        assert client.files_list_folder("").entries == []


def test_secrets_travel_only_in_their_places(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/In/a.jpg", b"a")
    sdk_client.files_list_folder("/In")
    sdk_client.files_get_temporary_link("/In/a.jpg")
    tokens = fake_dropbox.access_tokens
    assert tokens
    for seen in fake_dropbox.requests:
        text = seen.text()
        assert not any(token in text for token in tokens)
        if seen.path != "/oauth2/token":
            assert fake_dropbox.refresh_token not in text


def test_https_with_rewriting_session() -> None:
    with FakeDropbox(https=True) as fake:
        assert fake.ca_path is not None
        session = RewritingSession(fake.url, verify=fake.ca_path)
        with dropbox.Dropbox(
            oauth2_refresh_token=fake.refresh_token,
            app_key=fake.app_key,
            app_secret=fake.app_secret,
            session=session,
        ) as client:
            assert client.files_upload(b"tls", "/t.txt").size == 3


SUBPROCESS_SCRIPT = """
import json, os, dropbox
client = dropbox.Dropbox(oauth2_refresh_token=os.environ["RT"], app_key=os.environ["AK"],
                         app_secret=os.environ["AS"], max_retries_on_rate_limit=0)
client.files_upload(b"over tls", "/Recipe B.txt")
entries = client.files_list_folder("").entries
print(json.dumps([e.path_display for e in entries]))
client.close()
"""


def test_recipe_b_environment_in_a_subprocess() -> None:
    with FakeDropbox(https=True) as fake:
        env = dict(
            os.environ,
            **fake.sdk_environment(),
            RT=fake.refresh_token,
            AK=fake.app_key,
            AS=fake.app_secret or "",
        )
        done = subprocess.run(
            [sys.executable, "-c", SUBPROCESS_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == ["/Recipe B.txt"]
        assert fake.files_under("/") == {"/Recipe B.txt": b"over tls"}


def test_reset_connections(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    fake_dropbox.put_file("/In/x.jpg", b"1")
    fake_dropbox.reset_connections(1, routes=["files/get_metadata"])
    with pytest.raises(requests.ConnectionError):
        sdk_client.files_get_metadata("/In/x.jpg")
    assert fake_dropbox.faulted["reset"] == 1
    assert sdk_client.files_get_metadata("/In/x.jpg").name == "x.jpg"


def test_reset_connections_over_https() -> None:
    with FakeDropbox(https=True) as fake, fake.session() as session:
        fake.reset_connections(1, routes=["oauth2/token"])
        form = {"grant_type": "refresh_token", "refresh_token": fake.refresh_token}
        form.update(client_id=fake.app_key, client_secret=fake.app_secret or "")
        with pytest.raises(requests.ConnectionError):
            session.post(f"{fake.url}/oauth2/token", data=form, timeout=5)
        with session.post(f"{fake.url}/oauth2/token", data=form, timeout=5) as response:
            assert response.status_code == 200


def test_get_thumbnail_v2_through_the_sdk(fake_dropbox: FakeDropbox, sdk_client: Any) -> None:
    """The SDK's own call and parsing: a revision's thumbnail fits the box, upright, with
    transparency kept in WebP; Dropbox's error tags for what it does not render."""
    from io import BytesIO

    from PIL import Image

    picture = Image.new("RGBA", (800, 400), (200, 30, 30, 255))
    picture.paste((0, 0, 0, 0), (400, 0, 800, 400))  # the right half is transparent
    data = BytesIO()
    picture.save(data, "PNG")
    meta = sdk_client.files_upload(data.getvalue(), "/In/shot.png")
    fake_dropbox.put_file("/In/shot.png", b"a newer revision")  # rev: still finds the old one
    resource = files.PathOrLink.path(f"rev:{meta.rev}")

    result, response = sdk_client.files_get_thumbnail_v2(
        resource,
        format=files.ThumbnailFormat.webp,
        size=files.ThumbnailSize.w256h256,
        preserve_transparency=True,
    )
    thumbnail = Image.open(BytesIO(response.content))
    assert result.file_metadata.rev == meta.rev
    assert (thumbnail.format, thumbnail.size, thumbnail.mode) == ("WEBP", (256, 128), "RGBA")
    assert thumbnail.getpixel((10, 64))[3] == 255 and thumbnail.getpixel((250, 64))[3] == 0

    _, response = sdk_client.files_get_thumbnail_v2(resource)  # jpeg, w64h64
    assert Image.open(BytesIO(response.content)).size == (64, 32)

    refusals = {}
    fake_dropbox.put_file("/In/notes.txt", b"text")
    fake_dropbox.put_file("/In/broken.jpg", b"not a jpeg")
    for path, options in (
        ("/In/notes.txt", {}),
        ("/In/broken.jpg", {}),
        ("/In/missing.jpg", {}),
        (f"rev:{meta.rev}", {"preserve_transparency": True}),  # with jpeg
    ):
        with pytest.raises(sdk_errors.ApiError) as caught:
            sdk_client.files_get_thumbnail_v2(files.PathOrLink.path(path), **options)
        error = caught.value.error
        refusals[path] = f"path/{error.get_path()._tag}" if error.is_path() else error._tag
    assert refusals == {
        "/In/notes.txt": "unsupported_extension",
        "/In/broken.jpg": "unsupported_image",
        "/In/missing.jpg": "path/not_found",
        f"rev:{meta.rev}": "unsupported_output_format",
    }
