from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings, parse_settings
from daemon.ledger import Ledger
from daemon.service import Service
from daemon.storage.local import LocalStorage
from tests.helpers import ChromaKeyEngine


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the model's derived halves per test run (inherited by every `cutoutd`
    process the tests start), never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        patch.delenv("CACHE_DIRECTORY", raising=False)
        yield cache


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "RemoveBGProcess"


@pytest.fixture
def make_settings(root: Path, tmp_path: Path) -> Callable[..., Settings]:
    def make(**sections: Any) -> Settings:
        data: dict[str, Any] = {
            "source": {"root": str(root), "settle_seconds": 0, "poll_interval": 0.2},
            "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
            "retry": {"backoff_initial": 0.05, "backoff_multiplier": 1, "max_attempts": 3},
            "log": {"format": "text", "level": "DEBUG"},
            "http": {"port": 0},
        }
        for name, values in sections.items():
            if isinstance(values, list):  # arrays of tables: [[profile]]
                data[name] = values
            else:
                data.setdefault(name, {}).update(values)
        return parse_settings(data)

    return make


@pytest.fixture
def make_service(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Service]]:
    """A Service on a real folder and a real SQLite file, with the fast chroma-key engine."""
    made: list[Service] = []

    def make(fake: ChromaKeyEngine | None = None, **sections: Any) -> Service:
        settings = make_settings(**sections)
        storage = LocalStorage(
            settings.source.root,
            recursive=settings.source.recursive,
            settle_seconds=settings.source.settle_seconds,
        )
        ledger = Ledger(settings.ledger.url)
        service = Service(
            settings, storage=storage, engine=fake or ChromaKeyEngine(), ledger=ledger
        )
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()
