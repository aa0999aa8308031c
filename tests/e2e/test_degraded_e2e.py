"""The `degraded` and `recovered` notifications when Dropbox rejects the credentials, end to
end: the real `cutoutd run` against the HTTPS Dropbox fake (the real SDK, recipe B), a
webhook receiver on loopback, and the fake starting to answer 401 to the daemon's calls.

By design the daemon does not go on with rejected credentials: it says so, sends
`degraded` naming the cause (no secret), and exits 77, which systemd's unit does not
restart (RestartPreventExitStatus=77); a person authorizes again and starts it. The
restarted daemon sends `recovered` once Dropbox has answered it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.ledger import Ledger
from tests.e2e.conftest import Daemon, wait_for
from tests.fakes.dropbox_server import FakeDropbox
from tests.helpers import encode, shape_image
from tests.integration.test_alerts import SECRET_PATH, Receiver, receiver

ROOT = "/RemoveBGProcess"
__all__ = ["receiver"]  # the webhook receiver fixture


@pytest.fixture
def fake() -> Iterator[FakeDropbox]:
    with FakeDropbox(https=True) as server:
        yield server


def put_image(fake: FakeDropbox, name: str, n: int) -> None:
    image, _ = shape_image((160, 120), color=(40 + 60 * n, 90, 200 - 50 * n))
    fake.put_file(f"{ROOT}/input/{name}", encode(image, "JPEG", quality=95))


def outputs(fake: FakeDropbox) -> set[str]:
    return set(fake.files_under(f"{ROOT}/output"))


@pytest.mark.parametrize("rejection", ["expired_and_refresh_revoked", "invalid_access_token"])
def test_rejected_credentials_degraded_then_recovered_after_a_restart(
    fake: FakeDropbox, receiver: Receiver, tmp_path: Path, rejection: str
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "cutoutd.toml"
    config.write_text(
        f'[source]\nkind = "dropbox"\nroot = "{ROOT}"\npoll_interval = 0.5\nsettle_seconds = 0\n'
        f'[ledger]\nurl = "sqlite:///{ledger}"\n'
        "[dropbox]\ntimeout = 20\nmax_retries_on_error = 1\nmax_retries_on_rate_limit = 3\n"
        '[log]\nformat = "json"\nlevel = "INFO"\n[http]\nport = 0\n'
        '[[notify]]\nkind = "webhook"\nurl_credential = "CUTOUTD_HOOK"\n'
    )
    env = {**fake.daemon_environment(), "CUTOUTD_HOOK": receiver.url}
    put_image(fake, "first.jpg", 0)
    first = Daemon(config, env, tmp_path / "first.log")
    try:
        wait_for(lambda: f"{ROOT}/output/first.png" in outputs(fake), 120, "the first cutout")
        if rejection == "invalid_access_token":
            fake.forget_access_tokens()  # 401 invalid_access_token; the SDK does not refresh
        else:
            fake.revoke_refresh_token()
            fake.expire_access_tokens()  # 401 expired_access_token; the refresh: invalid_grant
        put_image(fake, "second.jpg", 1)  # wakes the longpoll: the next call is rejected
        code = first.wait(60)
    finally:
        if first.process.poll() is None:
            first.stop()
    log = (tmp_path / "first.log").read_text()
    assert code == 77, log[-3000:]
    [degraded] = receiver.bodies
    assert degraded["event"] == "degraded"
    assert degraded["reason"].startswith("credentials rejected: Dropbox rejected the ")
    assert "cutoutd auth dropbox" in degraded["text"]
    secrets = [fake.refresh_token, fake.app_secret or "", *fake.access_tokens, SECRET_PATH]
    told = json.dumps(receiver.bodies) + log
    assert not [s for s in secrets if s and s in told]
    assert f"{ROOT}/output/second.png" not in outputs(fake)

    if rejection != "invalid_access_token":
        fake.reinstate_refresh_token()  # authorized again
    second = Daemon(config, env, tmp_path / "second.log")
    try:
        wait_for(lambda: len(receiver.bodies) == 2, 60, "the recovered notification")
        wait_for(lambda: f"{ROOT}/output/second.png" in outputs(fake), 120, "the second cutout")
    finally:
        assert second.stop() == 0, (tmp_path / "second.log").read_text()[-3000:]
    recovered = receiver.bodies[1]
    assert recovered["event"] == "recovered"
    assert "before cutoutd last stopped" in recovered["text"]
    check = Ledger(f"sqlite:///{ledger}")
    try:
        sent = [(n["event"], n["status"]) for n in check.notifications()]
    finally:
        check.close()
    assert sent == [("degraded", "sent"), ("recovered", "sent")]
    told = json.dumps(receiver.bodies) + (tmp_path / "second.log").read_text()
    assert not [s for s in [*secrets, *fake.access_tokens] if s and s in told]
