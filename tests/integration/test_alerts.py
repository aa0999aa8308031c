"""Notifications against real local receivers: a webhook HTTP server on loopback and an
SMTP server (aiosmtpd) with STARTTLS and with TLS. The clock is injected: batching, the
thresholds and the digest's time are reached without waiting."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from daemon.alerts.dispatch import Dispatcher, Retry
from daemon.alerts.messages import Digest
from daemon.alerts.senders import EmailSender, WebhookSender
from daemon.alerts.watch import AlertWatcher, next_local_time
from daemon.config import parse_settings
from daemon.config_notify import NotifySettings
from daemon.ledger import Ledger
from daemon.models import ItemStatus
from daemon.secrets import register_secret
from daemon.service import Service
from daemon.storage.local import LocalStorage
from tests.helpers import ChromaKeyEngine, write_shape

SECRET_PATH = "/services/T0001/B0002/hook-secret-9f8e7d6c5b4a"
FAST = Retry(attempts=3, initial=0.01, maximum=0.05)


@dataclass
class Receiver:
    """A webhook endpoint: keeps each JSON body; answers 500 to the first `fail` posts."""

    fail: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests += 1
            if state.fail > 0:
                state.fail -= 1
                self.send_response(500)
            else:
                state.bodies.append(json.loads(body))
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}"
    register_secret(state.url)  # as read_secret() does for a url_credential
    yield state
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    watcher: AlertWatcher
    dispatcher: Dispatcher
    clock: Clock
    ledger: Ledger
    trouble: list[str]

    def tick(self, after: timedelta = timedelta(0)) -> None:
        self.clock.now += after
        self.watcher.tick()
        self.dispatcher.wait_idle()


@pytest.fixture
def rig(tmp_path: Path, receiver: Receiver) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**target: Any) -> Rig:
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        ledger.migrate()
        dispatcher = Dispatcher(
            lambda t, e, sent, n, title, error: ledger.record_notification(
                t, e, sent=sent, attempts=n, title=title, error=error
            ),
            FAST,
        )
        dispatcher.start()
        clock = Clock(datetime(2026, 11, 29, 10, 0, tzinfo=UTC))
        trouble: list[str] = []
        settings = NotifySettings(kind="webhook", name="webhook-1", **target)
        watcher = AlertWatcher(
            settings,
            WebhookSender(receiver.url, 5),
            dispatcher,
            now=clock,
            trouble=lambda now, threshold: trouble[0] if trouble else None,
            digest=lambda since, until: Digest(7, 2, 1, 9, [("not an image", 2)]),
            engine="photoshop",
        )
        made.append(Rig(watcher, dispatcher, clock, ledger, trouble))
        return made[-1]

    yield make
    for made_rig in made:
        made_rig.dispatcher.close()
        made_rig.ledger.close()


class FakeItem:
    def __init__(self, item_id: int, path: str) -> None:
        self.id, self.path = item_id, path


def fail(rig: Rig, item_id: int, path: str, reason: str) -> None:
    rig.watcher.item_failed(FakeItem(item_id, path), reason)  # type: ignore[arg-type]


def test_failures_are_batched_at_most_one_message_per_window(
    rig: Callable[..., Rig], receiver: Receiver
) -> None:
    r = rig(batch_minutes=5)
    for n in range(3):
        fail(r, n, f"shoes/{n}.jpg", f"not an image ({n})")
    r.tick()
    r.tick(timedelta(minutes=4))
    assert receiver.bodies == []
    r.tick(timedelta(minutes=1))
    [first] = receiver.bodies
    assert first["event"] == "failed" and first["count"] == 3
    assert "shoes/2.jpg: not an image (2)" in first["text"]
    assert [f["path"] for f in first["failures"]] == ["shoes/0.jpg", "shoes/1.jpg", "shoes/2.jpg"]

    fail(r, 9, "late.jpg", "rejected")
    r.tick(timedelta(minutes=1))  # within 5 minutes of the last message
    assert len(receiver.bodies) == 1
    r.tick(timedelta(minutes=4))
    assert len(receiver.bodies) == 2 and receiver.bodies[1]["failures"][0]["path"] == "late.jpg"
    rows = r.ledger.notifications()
    assert [(row["event"], row["status"], row["attempts"]) for row in rows] == [
        ("failed", "sent", 1),
        ("failed", "sent", 1),
    ]


def test_sending_is_retried_after_the_receiver_fails(
    rig: Callable[..., Rig], receiver: Receiver
) -> None:
    r = rig(batch_minutes=0)
    receiver.fail = 2
    fail(r, 1, "a.jpg", "not an image")
    r.tick()
    assert receiver.requests == 3 and len(receiver.bodies) == 1
    [row] = r.ledger.notifications()
    assert (row["status"], row["attempts"], row["error"]) == ("sent", 3, None)


def test_given_up_after_its_attempts_is_recorded_and_no_secret_is_logged(
    rig: Callable[..., Rig], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = rig(batch_minutes=0)
    receiver.fail = 99
    fail(r, 1, "a.jpg", "not an image")
    r.tick()
    [row] = r.ledger.notifications()
    assert (row["status"], row["attempts"], row["error"]) == ("failed", 3, "webhook answered 500")
    # an unreachable receiver: the error of `requests` names the URL, which must not show
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}{SECRET_PATH}"
    closed.close()
    register_secret(url)
    r.watcher.sender = WebhookSender(url, 2)
    fail(r, 2, "b.jpg", "not an image")
    r.tick()
    last = r.ledger.notifications()[-1]
    assert last["status"] == "failed" and "hook-secret" not in (last["error"] or "")
    ours = [rec for rec in caplog.records if rec.name.startswith("daemon")]
    text = "\n".join(rec.getMessage() for rec in ours)
    assert "hook-secret" not in text + json.dumps(r.ledger.notifications(), default=str)
    assert "webhook unreachable: ConnectionError" in text
    assert "notify.retry" in {getattr(rec, "event", "") for rec in ours}


def test_degraded_then_recovered_once_each(rig: Callable[..., Rig], receiver: Receiver) -> None:
    r = rig(rate_limit_storm=3)
    r.trouble.append("local folder /x unreachable: no successful poll for 6 min")
    r.tick()
    r.tick(timedelta(minutes=1))
    r.trouble.clear()
    r.tick(timedelta(minutes=9))
    assert [b["event"] for b in receiver.bodies] == ["degraded", "recovered"]
    assert "unreachable" in receiver.bodies[0]["text"]
    assert receiver.bodies[1]["minutes"] == 10
    for _ in range(3):  # a storm of 429s
        r.watcher.retry_scheduled(rate_limited=True)
    r.tick()
    assert receiver.bodies[-1]["event"] == "degraded" and "429" in receiver.bodies[-1]["text"]
    r.tick(timedelta(minutes=6))  # the storm is over
    assert receiver.bodies[-1]["event"] == "recovered"


def test_a_degraded_left_open_by_a_stop_is_recovered_after_the_restart_polls(
    rig: Callable[..., Rig], receiver: Receiver
) -> None:
    """Credentials rejected stop the daemon (exit 77) after `degraded` is sent. The next
    process reads that from the ledger and sends `recovered` once storage answered it,
    not at start; a target whose last word was `recovered` starts clean."""
    first = rig()
    first.trouble.append("credentials rejected: Dropbox rejected the refresh token")
    first.tick()
    assert [b["event"] for b in receiver.bodies] == ["degraded"]
    told_at = first.ledger.notifications()[-1]["at"]
    assert first.ledger.open_degradation("webhook-1") == told_at
    assert first.ledger.open_degradation("email-2") is None

    polled: list[bool] = []
    second = rig()
    second.watcher.open_degradation = second.ledger.open_degradation
    second.watcher.polled = lambda: bool(polled)
    second.watcher.start()
    second.tick(timedelta(minutes=30))
    assert len(receiver.bodies) == 1  # no poll yet: not known to be over
    polled.append(True)
    second.tick(timedelta(minutes=1))
    assert [b["event"] for b in receiver.bodies] == ["degraded", "recovered"]
    assert "before cutoutd last stopped" in receiver.bodies[1]["text"]
    assert second.ledger.open_degradation("webhook-1") is None

    third = rig()
    third.watcher.open_degradation = third.ledger.open_degradation
    third.watcher.start()
    third.tick(timedelta(minutes=1))
    assert len(receiver.bodies) == 2


def test_the_digest_goes_out_at_its_local_time_once_a_day(
    rig: Callable[..., Rig], receiver: Receiver
) -> None:
    r = rig(digest_time="08:00", events=("digest",))
    due = next_local_time(r.clock.now, 8, 0)
    r.tick(due - r.clock.now - timedelta(seconds=1))
    assert receiver.bodies == []
    r.tick(timedelta(seconds=2))
    [digest] = receiver.bodies
    assert digest["event"] == "digest"
    assert (digest["succeeded"], digest["failed"], digest["submissions"]) == (7, 2, 9)
    assert "9 Adobe submissions" in digest["text"] and "2× not an image" in digest["text"]
    r.tick(timedelta(hours=23))
    assert len(receiver.bodies) == 1
    r.tick(timedelta(hours=1))
    assert len(receiver.bodies) == 2


def test_events_not_chosen_are_not_sent(rig: Callable[..., Rig], receiver: Receiver) -> None:
    r = rig(batch_minutes=0, events=("degraded",))
    fail(r, 1, "a.jpg", "not an image")
    r.tick()
    assert receiver.bodies == []


# -- e-mail -------------------------------------------------------------------------------


@dataclass
class Mailbox:
    messages: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # what ssl.create_default_context trusts
    return ca.issue_cert("127.0.0.1", "localhost")


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and data.password == b"smtp-pass-3c2b1a"
    return AuthResult(success=ok)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_email_over_starttls_and_tls(
    tls: Any, security: str, caplog: pytest.LogCaptureFixture
) -> None:
    import ssl

    caplog.set_level(logging.DEBUG)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.configure_cert(context)
    mailbox = Mailbox()
    port = free_port()
    options: dict[str, Any] = {"authenticator": authenticate, "auth_require_tls": True}
    if security == "tls":
        # aiosmtpd only counts STARTTLS as TLS for AUTH; here the whole connection is TLS
        options.update(ssl_context=context, auth_require_tls=False)
    else:
        options.update(tls_context=context, require_starttls=True)
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        target = NotifySettings(
            kind="email", name="email-1", smtp_host="127.0.0.1", smtp_port=port,
            security=security, username="cutoutd", password_credential="SMTP_PASSWORD",
            sender="cutoutd@example.com", recipients=("ops@example.com",),
        )  # fmt: skip
        register_secret("smtp-pass-3c2b1a")
        from daemon.alerts.messages import Failure, failed_alert

        EmailSender(target, "smtp-pass-3c2b1a").send(failed_alert([Failure("a.jpg", "bad", 1)]))
        with pytest.raises(Exception, match="SMTP"):
            EmailSender(target, "wrong").send(failed_alert([Failure("a.jpg", "bad", 1)]))
    finally:
        controller.stop()
    [raw] = mailbox.messages
    message = message_from_bytes(raw)
    assert message["Subject"] == "cutoutd: 1 image failed"
    assert message["To"] == "ops@example.com"
    assert "a.jpg: bad" in message.get_payload()
    assert "smtp-pass-3c2b1a" not in caplog.text


# -- wired into the daemon ----------------------------------------------------------------


def test_the_daemon_notifies_a_failure_at_the_end_of_a_run(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "RemoveBGProcess"
    write_shape(root / "input" / "good.jpg")
    (root / "input" / "bad.jpg").write_bytes(b"not an image")
    monkeypatch.setenv("CUTOUTD_TEST_HOOK", receiver.url)
    settings = parse_settings({
        "source": {"root": str(root), "settle_seconds": 0, "poll_interval": 0.2},
        "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
        "http": {"enabled": False},
        "notify": [{"kind": "webhook", "url_credential": "CUTOUTD_TEST_HOOK", "batch_minutes": 60}],
    })  # fmt: skip
    ledger = Ledger(settings.ledger.url)
    service = Service(
        settings,
        storage=LocalStorage(str(root), settle_seconds=0),
        engine=ChromaKeyEngine(),
        ledger=ledger,
    )
    try:
        summary = service.run_once()
        assert summary.counts == {ItemStatus.SUCCEEDED: 1, ItemStatus.FAILED: 1}
    finally:
        service.close()  # the batch still waiting goes out now
    [body] = receiver.bodies
    assert body["event"] == "failed" and body["failures"][0]["path"] == "bad.jpg"
    check = Ledger(settings.ledger.url)
    assert [row["status"] for row in check.notifications()] == ["sent"]
    check.close()
