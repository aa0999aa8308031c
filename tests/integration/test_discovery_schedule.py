"""A Dropbox longpoll change wakes the discovery job before its interval: the service on
the real `dropbox` SDK against the fake Dropbox server, a 60 s poll interval, and the
upload seen by a pass within seconds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.config import Settings
from daemon.ledger import Ledger
from daemon.service import Service
from daemon.storage.dropbox import DropboxStorage
from tests.fakes.dropbox_server import FakeDropbox
from tests.helpers import ChromaKeyEngine

pytest_plugins = ["tests.fakes.dropbox_fixtures"]
ROOT = "/RemoveBGProcess"  # the fixtures' folder
WAIT = 20.0  # far below the 60 s interval: only the longpoll can start the pass in time


def test_a_longpoll_change_runs_a_pass_before_the_interval(
    fake_dropbox: FakeDropbox,
    storage_factory: Callable[..., DropboxStorage],
    make_settings: Callable[..., Settings],
) -> None:
    fake_dropbox.longpoll_max_wait = 5  # the daemon's longpoll returns soon after the stop
    longpolling = threading.Event()

    def seen(route: str, _arg: Any) -> None:
        if route == "files/list_folder/longpoll":
            longpolling.set()

    fake_dropbox.hooks.append(seen)
    settings = make_settings(source={"poll_interval": 60, "longpoll": True})
    service = Service(
        settings,
        storage=storage_factory(),
        engine=ChromaKeyEngine(),
        ledger=Ledger(settings.ledger.url),
    )
    thread = threading.Thread(target=service.run_forever, name="service")
    thread.start()
    try:
        first = service.schedule.wait_for_pass(after=0, timeout=WAIT)
        assert first is not None
        [job] = service.schedule.jobs()
        assert job.next_run_time > datetime.now(UTC) + timedelta(seconds=50)
        assert longpolling.wait(WAIT), "the service never longpolled"
        fake_dropbox.put_file(f"{ROOT}/input/wake.jpg", b"an upload")
        woken = service.schedule.wait_for_pass(after=first.number, timeout=WAIT)
        assert woken is not None, "no pass before the interval"
        assert any(item.path.endswith("wake.jpg") for item in service.ledger.list_items())
        assert fake_dropbox.counts["files/list_folder/continue"] >= 1
    finally:
        service.request_stop()
        thread.join(WAIT)
        service.close()
    assert not thread.is_alive()
