"""Team spaces: DropboxStorage and the pipeline on the fake's team-space mode, through the
real `dropbox` SDK (recipe A)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from daemon.config import DropboxSettings, Settings
from daemon.errors import CursorResetError, TransientError
from daemon.ledger import Ledger
from daemon.models import RemoteFile
from daemon.service import Service
from daemon.storage.dropbox import DropboxCredentials, DropboxStorage
from tests.fakes.dropbox_server import FakeDropbox
from tests.helpers import ChromaKeyEngine, encode, shape_image

FAST = DropboxSettings(timeout=10.0, max_retries_on_error=1, max_retries_on_rate_limit=0)
TEAM_ROOT = "/Marketing/RemoveBGProcess"
HOME = "/Alice Smith"


@pytest.fixture
def team() -> Iterator[FakeDropbox]:
    with FakeDropbox(team_space=True) as fake:
        fake.put_file(f"{TEAM_ROOT}/input/team.jpg", b"team")
        fake.put_file(f"{HOME}{TEAM_ROOT}/input/decoy.jpg", b"decoy")
        yield fake


@pytest.fixture
def make_storage(team: FakeDropbox) -> Iterator[Callable[..., DropboxStorage]]:
    made: list[DropboxStorage] = []

    def make(path_root: str = "root", root: str = TEAM_ROOT) -> DropboxStorage:
        credentials = DropboxCredentials(team.app_key, team.app_secret, team.refresh_token)
        settings = replace(FAST, path_root=path_root)
        made.append(DropboxStorage(root, False, settings, credentials, session=team.session()))
        return made[-1]

    yield make
    for storage in made:
        storage.close()


def names(batch_files: tuple[object, ...]) -> list[str]:
    return sorted(f.path for f in batch_files if isinstance(f, RemoteFile))


def test_root_reads_the_team_folder_and_home_the_members(
    make_storage: Callable[..., DropboxStorage],
) -> None:
    rooted, home = make_storage(), make_storage("home")
    assert names(rooted.list_changes(None).changes) == ["team.jpg"]
    assert names(home.list_changes(None).changes) == ["decoy.jpg"]
    assert rooted.namespace is not None and home.namespace is not None
    assert rooted.namespace.team and rooted.namespace.kind == "root"
    assert rooted.namespace.id != home.namespace.id


def test_check_reports_where_the_root_is_and_hints_at_the_other_namespace(
    team: FakeDropbox, make_storage: Callable[..., DropboxStorage]
) -> None:
    report = make_storage().inspect_root()
    assert report.exists and report.elsewhere is None
    assert report.location.startswith("Dropbox team space (business); root namespace ")
    team.put_file(f"{HOME}/Photos/RemoveBGProcess/input/x.jpg", b"x")
    only_at_home = make_storage(root="/Photos/RemoveBGProcess").inspect_root()
    assert (only_at_home.exists, only_at_home.elsewhere) == (False, "home")
    team.put_file("/Studio/RemoveBGProcess/input/y.jpg", b"y")
    only_at_root = make_storage("home", root="/Studio/RemoveBGProcess").inspect_root()
    assert (only_at_root.exists, only_at_root.elsewhere) == (False, "root")
    assert make_storage(root="/Nowhere").inspect_root().elsewhere is None


def test_a_cursor_from_another_namespace_is_reset(
    make_storage: Callable[..., DropboxStorage],
) -> None:
    home_cursor = make_storage("home").list_changes(None).cursor
    with pytest.raises(CursorResetError, match="path_root changed"):
        make_storage().list_changes(home_cursor)
    legacy = home_cursor.split("|", 1)[1]  # stored by a version that knew only home
    assert make_storage("home").list_changes(legacy).changes == ()
    with pytest.raises(CursorResetError):
        make_storage().list_changes(legacy)


@pytest.mark.parametrize("first", ["an image's call", "the listing"])
def test_invalid_root_rereads_the_account_and_resets_the_cursor_once(
    first: str,
    team: FakeDropbox,
    make_storage: Callable[..., DropboxStorage],
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The account's root namespace changes under a running daemon (it left a team and
    joined another): the next calls get 422 invalid_root; the account is read again, the
    cursor reset with one WARNING, and the ledger keeps its rows."""
    image, _ = shape_image((64, 48), shape="ellipse", color=(200, 40, 40))
    team.put_file(f"{TEAM_ROOT}/input/team.jpg", encode(image, "JPEG", quality=95))
    settings = make_settings(source={"kind": "dropbox", "root": TEAM_ROOT})
    storage = make_storage()
    service = Service(
        settings, storage=storage, engine=ChromaKeyEngine(), ledger=Ledger(settings.ledger.url)
    )
    service.start()
    assert service.watcher.discover() == 0
    team.namespaces.root_id = "3160920000"  # a new root namespace for the same tree
    if first == "an image's call":
        with pytest.raises(TransientError, match="root namespace changed"):
            storage.read(service.ledger.list_items()[0].as_file())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert service.watcher.discover() == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [getattr(r, "event", None) for r in warnings] == ["cursor.reset"]
    assert "namespace" in warnings[0].getMessage()
    assert len(service.ledger.list_items()) == 1  # the rows stay, none twice
    service.workers.work_until_idle()
    assert f"{TEAM_ROOT}/output/team.png" in team.files_under(f"{TEAM_ROOT}/output")
    service.close()


def test_a_personal_account_reads_as_before() -> None:
    with FakeDropbox() as personal:
        personal.put_file("/RemoveBGProcess/input/a.jpg", b"a")
        credentials = DropboxCredentials(
            personal.app_key, personal.app_secret, personal.refresh_token
        )
        session = personal.session()
        storage = DropboxStorage("/RemoveBGProcess", False, FAST, credentials, session=session)
        report = storage.inspect_root()
        assert report.exists
        assert report.location == (
            "Dropbox personal account (pro); namespace 3160911537 (root and home are the same)"
        )
        assert names(storage.list_changes(None).changes) == ["a.jpg"]
        storage.close()
        session.close()
