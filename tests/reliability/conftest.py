from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakePhotoshop
from tests.reliability.harness import start_adobe

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory carries the `reliability` marker (`-m reliability`)."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def dropbox() -> Iterator[FakeDropbox]:
    with FakeDropbox(https=True) as server:
        yield server


@pytest.fixture
def adobe(dropbox: FakeDropbox) -> Iterator[FakePhotoshop]:
    fake = start_adobe(dropbox)
    try:
        yield fake
    finally:
        fake.stop()
