"""The fake Dropbox's team-space mode, checked with the real `dropbox` SDK (recipe A)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dropbox
import pytest
from dropbox import common, exceptions, files

from tests.fakes.dropbox_server import FakeDropbox


def client_for(fake: FakeDropbox) -> Any:
    return dropbox.Dropbox(
        oauth2_refresh_token=fake.refresh_token,
        app_key=fake.app_key,
        app_secret=fake.app_secret,
        session=fake.session(),
        max_retries_on_error=0,
        max_retries_on_rate_limit=0,
        timeout=10,
    )


@pytest.fixture
def team() -> Iterator[FakeDropbox]:
    with FakeDropbox(team_space=True) as fake:
        fake.put_file("/Marketing/RemoveBGProcess/input/team.jpg", b"team")
        fake.put_file("/Alice Smith/Marketing/RemoveBGProcess/input/mine.jpg", b"mine")
        yield fake


def test_the_account_says_team_space_with_its_two_namespaces(team: FakeDropbox) -> None:
    account = client_for(team).users_get_current_account()
    info = account.root_info
    assert isinstance(info, common.TeamRootInfo)
    assert info.home_path == "/Alice Smith"
    assert info.root_namespace_id != info.home_namespace_id
    assert account.account_type.is_business()


def test_without_the_header_paths_are_the_home_namespace(team: FakeDropbox) -> None:
    client = client_for(team)
    listing = client.files_list_folder("/Marketing/RemoveBGProcess/input")
    assert [e.path_display for e in listing.entries] == [
        "/Marketing/RemoveBGProcess/input/mine.jpg"
    ]
    names = {e.name for e in client.files_list_folder("").entries}
    assert names == {"Marketing"}  # the member's own folder only
    metadata, response = client.files_download("/Marketing/RemoveBGProcess/input/mine.jpg")
    assert response.content == b"mine" and metadata.path_lower.startswith("/marketing/")


def test_the_root_header_shows_the_team_folders_and_the_member_folder(
    team: FakeDropbox,
) -> None:
    base = client_for(team)
    root_id = base.users_get_current_account().root_info.root_namespace_id
    rooted = base.with_path_root(common.PathRoot.root(root_id))
    assert {e.name for e in rooted.files_list_folder("").entries} == {"Marketing", "Alice Smith"}
    uploaded = rooted.files_upload(b"out", "/Marketing/RemoveBGProcess/output/team.png")
    assert uploaded.path_display == "/Marketing/RemoveBGProcess/output/team.png"
    moved = rooted.files_move_batch_v2(
        [files.RelocationPath("/Marketing/RemoveBGProcess/input/team.jpg",
                              "/Marketing/RemoveBGProcess/archive/team.jpg")]
    )  # fmt: skip
    assert moved.is_complete() or moved.is_async_job_id()
    assert "/Marketing/RemoveBGProcess/archive/team.jpg" in team.files_under("/Marketing")
    assert "/Alice Smith/Marketing/RemoveBGProcess/input/mine.jpg" in team.files_under(
        "/Alice Smith"
    )


def test_a_root_that_is_not_the_accounts_is_invalid_root(team: FakeDropbox) -> None:
    stale = client_for(team).with_path_root(common.PathRoot.root("1234"))
    with pytest.raises(exceptions.PathRootError) as raised:
        stale.files_list_folder("")
    assert raised.value.error.is_invalid_root()
    assert isinstance(raised.value.error.get_invalid_root(), common.TeamRootInfo)
    other = client_for(team).with_path_root(common.PathRoot.namespace_id("1234"))
    with pytest.raises(exceptions.PathRootError) as denied:
        other.files_list_folder("")
    assert denied.value.error.is_no_permission()


def test_a_cursor_belongs_to_its_namespace(team: FakeDropbox) -> None:
    base = client_for(team)
    root_id = base.users_get_current_account().root_info.root_namespace_id
    cursor = base.files_list_folder("/Marketing/RemoveBGProcess/input").cursor
    rooted = base.with_path_root(common.PathRoot.root(root_id))
    with pytest.raises(exceptions.ApiError) as raised:
        rooted.files_list_folder_continue(cursor)
    assert raised.value.error.is_reset()
    assert base.files_list_folder_continue(cursor).entries == []


def test_a_personal_account_has_one_namespace() -> None:
    with FakeDropbox() as fake:
        fake.put_file("/RemoveBGProcess/input/a.jpg", b"a")
        base = client_for(fake)
        info = base.users_get_current_account().root_info
        assert isinstance(info, common.UserRootInfo)
        assert info.root_namespace_id == info.home_namespace_id
        rooted = base.with_path_root(common.PathRoot.root(info.root_namespace_id))
        assert [e.name for e in rooted.files_list_folder("/RemoveBGProcess/input").entries] == [
            "a.jpg"
        ]
