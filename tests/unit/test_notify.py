"""sd_notify against a real unix datagram socket named in NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.compose import discovery_interval
from daemon.config import Settings
from daemon.notify import Notifier
from daemon.service import Service
from tests.helpers import write_shape

MakeService = Callable[..., Service]


class Listener:
    """What systemd does: a bound SOCK_DGRAM socket; each datagram is one message."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.socket.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.socket.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> list[dict[str, str]]:
        messages = []
        self.socket.setblocking(False)
        try:
            while True:
                data = self.socket.recv(4096).decode()
                messages.append(dict(line.split("=", 1) for line in data.split("\n")))
        except BlockingIOError:
            return messages
        finally:
            self.socket.settimeout(5)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    server = Listener(str(tmp_path / "notify.sock"))
    yield server
    server.socket.close()


def test_messages_arrive_as_one_datagram_each(listener: Listener) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    assert notifier.ready("running on /srv/photos")
    assert listener.receive() == {"READY": "1", "STATUS": "running on /srv/photos"}
    assert notifier.watchdog()
    assert listener.receive() == {"WATCHDOG": "1"}
    assert notifier.status("3 done,\n1 in flight")
    assert listener.receive() == {"STATUS": "3 done, 1 in flight"}  # never a second line
    assert notifier.stopping()
    assert listener.receive() == {"STOPPING": "1"}
    notifier.close()


def test_abstract_socket() -> None:
    listener = Listener(f"@cutoutd-test-{uuid.uuid4().hex}")
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
        assert notifier.ready()
        assert listener.receive() == {"READY": "1"}
        notifier.close()
    finally:
        listener.socket.close()


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    assert not notifier.ready()
    assert not notifier.watchdog("status")


def test_unsupported_address_is_ignored() -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and not notifier.ready()


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", **environ})
    assert notifier.watchdog_seconds == expected


def test_discovery_runs_often_enough_for_the_watchdog(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(source={"poll_interval": 300})
    assert discovery_interval(settings, Notifier("/run/x", watchdog_seconds=120)) == 60
    assert discovery_interval(settings, Notifier(None, watchdog_seconds=120)) == 300


def test_each_discovery_pass_pings_watchdog_with_status(
    make_service: MakeService, root: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    write_shape(root / "input" / "a.jpg")
    write_shape(root / "input" / "b.jpg", color=(10, 200, 30))
    service = make_service()
    service.start()
    service.watcher.discover()
    page, passed = listener.pending()
    assert page == {"WATCHDOG": "1"}  # after each listed page, then after the pass
    assert passed["WATCHDOG"] == "1"
    assert passed["STATUS"] == "0 done, 0 in flight, 0 failed, 2 pending, last poll 0 s ago"
    service.workers.work_until_idle()
    service.watcher.discover()
    assert listener.pending()[-1]["STATUS"].startswith("2 done, 0 in flight, 0 failed, 0 pending")


def test_no_watchdog_ping_once_a_worker_thread_died(
    make_service: MakeService, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    service = make_service()
    service.start()
    dead = threading.Thread(target=lambda: None, name="worker-0")
    dead.start()
    dead.join()
    service.workers.threads = [dead]
    service.watcher.discover()
    [message] = listener.pending()
    assert "WATCHDOG" not in message  # systemd will restart us after WatchdogSec
    assert message["STATUS"].startswith("0 done")
    assert service.health.problem() == "worker threads stopped: worker-0"
