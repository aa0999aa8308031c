"""Fixtures for tests that drive the real `dropbox` SDK against `FakeDropbox`.

Use with `pytest_plugins = ["tests.fakes.dropbox_fixtures"]` in a test module.
In-process tests use recipe A (a URL-rewriting session); see `dropbox_server.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dropbox
import pytest

from daemon.config import DropboxSettings
from daemon.storage.dropbox import DropboxCredentials, DropboxStorage
from tests.fakes.dropbox_server import FakeDropbox

ROOT = "/RemoveBGProcess"
# Finite, fast SDK retries: 429s surface at once, one quick retry on 5xx.
FAST = DropboxSettings(
    timeout=10.0, max_retries_on_error=1, max_retries_on_rate_limit=0, longpoll_timeout=30
)


@pytest.fixture
def fake_dropbox() -> Iterator[FakeDropbox]:
    with FakeDropbox() as fake:
        yield fake


@pytest.fixture
def sdk_client(fake_dropbox: FakeDropbox) -> Iterator[Any]:
    """A raw SDK client (recipe A) with finite retries."""
    client = dropbox.Dropbox(
        oauth2_refresh_token=fake_dropbox.refresh_token,
        app_key=fake_dropbox.app_key,
        app_secret=fake_dropbox.app_secret,
        session=fake_dropbox.session(),
        max_retries_on_error=1,
        max_retries_on_rate_limit=0,
        timeout=10,
    )
    yield client
    client.close()


StorageFactory = Callable[..., DropboxStorage]


@pytest.fixture
def storage_factory(fake_dropbox: FakeDropbox) -> Iterator[StorageFactory]:
    """`make(recursive=False, settings=FAST, root=ROOT, refresh_token=None)`; all closed after."""
    made: list[tuple[DropboxStorage, Any]] = []

    def make(
        *,
        recursive: bool = False,
        settings: DropboxSettings = FAST,
        root: str = ROOT,
        refresh_token: str | None = None,
        app_secret: str | None = fake_dropbox.app_secret,
        layout: bool = True,
    ) -> DropboxStorage:
        credentials = DropboxCredentials(
            fake_dropbox.app_key, app_secret, refresh_token or fake_dropbox.refresh_token
        )
        session = fake_dropbox.session()
        storage = DropboxStorage(root, recursive, settings, credentials, session=session)
        made.append((storage, session))
        if layout:
            storage.ensure_layout()
        return storage

    yield make
    for storage, session in made:
        storage.close()
        session.close()


@pytest.fixture
def dropbox_storage(storage_factory: StorageFactory) -> DropboxStorage:
    return storage_factory()
