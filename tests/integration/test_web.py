"""The status page's server over real HTTP on loopback (waitress), with a real SQLite
ledger and folder: read pages, the write endpoints refused without a token, with a wrong
token, without the CSRF field and from another site, and done with all of them."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from daemon.models import ItemStatus
from daemon.service import Service
from daemon.web.server import WebServer
from tests.helpers import write_shape

TOKEN = "web-token-8d2f61c0aa"
MakeService = Callable[..., Service]


@pytest.fixture
def served(
    make_service: MakeService, root: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Service, str]]]:
    servers: list[WebServer] = []

    def serve(token: bool = True) -> tuple[Service, str]:
        if token:
            monkeypatch.setenv("CUTOUTD_TEST_WEB_TOKEN", TOKEN)
        write_shape(root / "input" / "good.jpg")
        (root / "input" / "bad.jpg").write_bytes(b"not an image")
        http = {"port": 0, "token_credential": "CUTOUTD_TEST_WEB_TOKEN" if token else ""}
        service = make_service(http=http)
        summary = service.run_once()
        assert summary.counts == {ItemStatus.SUCCEEDED: 1, ItemStatus.FAILED: 1}
        service.stop.clear()
        server = service.serve_http()
        assert server is not None
        servers.append(server)
        return service, server.url.rstrip("/")

    yield serve
    for server in servers:
        server.close()


def failed_id(service: Service) -> int:
    [item] = service.ledger.list_items(statuses=[ItemStatus.FAILED])
    return item.id


def signed_in(url: str) -> tuple[requests.Session, str]:
    """A session that signed in with the token, and the page's CSRF field."""
    session = requests.Session()
    response = session.post(f"{url}/login", data={"token": TOKEN}, allow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    page = session.get(f"{url}/failures").text
    [csrf] = re.findall(r'name="csrf" value="([0-9a-f]{64})"', page)[:1]
    return session, csrf


def test_pages_answer_and_show_no_secret(served: Callable[..., tuple[Service, str]]) -> None:
    service, url = served()
    for path in ("/", "/results", "/failures", "/failures?status=any&path=*.jpg",
                 f"/items/{failed_id(service)}", "/api/overview", "/healthz", "/metrics"):  # fmt: skip
        response = requests.get(url + path, timeout=5)
        assert response.status_code == 200, path
        assert TOKEN not in response.text
        assert "script-src 'self'" in response.headers.get("Content-Security-Policy", "")
    assert "not an image" in requests.get(f"{url}/failures", timeout=5).text
    assert requests.get(f"{url}/failures?since=yesterday", timeout=5).status_code == 400
    assert requests.get(f"{url}/items/999", timeout=5).status_code == 404
    assert requests.get(f"{url}/thumbs/999-after.webp", timeout=5).status_code == 404
    data = requests.get(f"{url}/api/overview", timeout=5).json()
    assert data["counts"]["all"] == {"succeeded": 1, "failed": 1, "skipped": 0}


def test_without_a_token_configured_every_write_is_403(
    served: Callable[..., tuple[Service, str]],
) -> None:
    service, url = served(token=False)
    item = failed_id(service)
    assert "Retry" not in requests.get(f"{url}/failures", timeout=5).text
    for path in ("/login", f"/items/{item}/retry", f"/items/{item}/reprocess", "/logout"):
        response = requests.post(url + path, data={"token": TOKEN}, timeout=5)
        assert response.status_code == 403, path
    assert service.ledger.get(item).status == ItemStatus.FAILED  # type: ignore[union-attr]


def test_writes_refused_without_token_wrong_token_csrf_or_cross_site(
    served: Callable[..., tuple[Service, str]],
) -> None:
    service, url = served()
    item = failed_id(service)
    retry = f"{url}/items/{item}/retry"
    assert requests.post(retry, timeout=5).status_code == 403  # no cookie
    assert requests.post(f"{url}/login", data={"token": "wrong"}, timeout=5).status_code == 403
    forged = requests.Session()
    forged.cookies.set("cutoutd_session", "0" * 64)
    assert forged.post(retry, timeout=5).status_code == 403  # a made-up cookie
    session, csrf = signed_in(url)
    assert session.post(retry, timeout=5).status_code == 403  # no CSRF field
    assert session.post(retry, data={"csrf": "0" * 64}, timeout=5).status_code == 403
    cross_site = {"Origin": "https://evil.example"}
    response = session.post(retry, data={"csrf": csrf}, headers=cross_site, timeout=5)
    assert response.status_code == 403
    referer = {"Referer": "https://evil.example/page"}
    assert session.post(retry, data={"csrf": csrf}, headers=referer, timeout=5).status_code == 403
    login = requests.post(f"{url}/login", data={"token": TOKEN}, headers=cross_site, timeout=5)
    assert login.status_code == 403
    assert session.get(retry, timeout=5).status_code == 405  # POST only
    assert service.ledger.get(item).status == ItemStatus.FAILED  # type: ignore[union-attr]


def test_retry_and_reprocess_with_the_token(
    served: Callable[..., tuple[Service, str]], root: Path
) -> None:
    service, url = served()
    item = failed_id(service)
    session, csrf = signed_in(url)
    key = requests.get(f"{url}/api/overview", timeout=5).json()["failures_key"]
    listed = session.get(f"{url}/fragments/failures").text  # the overview's live list
    assert "bad.jpg" in listed and "not an image" in listed and 'data-action="retry"' in listed
    same_site = {"Origin": url}
    response = session.post(
        f"{url}/items/{item}/retry", data={"csrf": csrf}, headers=same_site, allow_redirects=False
    )
    assert response.status_code == 303, response.text
    requeued = service.ledger.get(item)
    assert requeued is not None and requeued.status == ItemStatus.PENDING
    assert (root / "input" / "bad.jpg").exists()  # moved back from failed/
    events = service.ledger.events(item)
    assert events[-1]["actor"] == "web:127.0.0.1", events
    assert {e["event"] for e in events} >= {"retry_requested", "input_restored"}
    assert requests.get(f"{url}/api/overview", timeout=5).json()["failures_key"] != key
    assert "bad.jpg" not in requests.get(f"{url}/fragments/failures", timeout=5).text
    # a second Retry finds it no longer failed: 409 with the reason, nothing changes
    again = session.post(f"{url}/items/{item}/retry", data={"csrf": csrf}, headers=same_site)
    assert again.status_code == 409 and "not failed" in again.text

    [good] = service.ledger.list_items(statuses=[ItemStatus.SUCCEEDED])
    done = session.post(f"{url}/items/{good.id}/reprocess", data={"csrf": csrf})
    assert done.status_code == 200 and done.url.endswith(f"/items/{good.id}")
    assert service.ledger.get(good.id).status == ItemStatus.PENDING  # type: ignore[union-attr]
