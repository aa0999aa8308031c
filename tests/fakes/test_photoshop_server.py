"""The Photoshop fake's own tests: it must behave like the reference says Adobe does."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.fakes.photoshop_server import FakePhotoshop, make_cutout

SCOPE = "openid,AdobeID,read_organizations"


def shape_image(fmt: str = "PNG", size: tuple[int, int] = (120, 80)) -> bytes:
    """A red rectangle on a white background."""
    image = Image.new("RGB", size, (255, 255, 255))
    pixels = np.asarray(image).copy()
    pixels[20:60, 30:90] = (200, 20, 20)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def fake() -> Iterator[FakePhotoshop]:
    with FakePhotoshop(submit_limit=100, submit_period=1.0) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def token(fake: FakePhotoshop, http: requests.Session) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "scope": SCOPE,
    }
    with http.post(fake.ims_url, data=form, timeout=5) as response:
        assert response.status_code == 200
        return str(response.json()["access_token"])


def headers(fake: FakePhotoshop, http: requests.Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(fake, http)}", "x-api-key": fake.client_id}


def submit(
    fake: FakePhotoshop, http: requests.Session, body: dict[str, Any], auth: dict[str, str]
) -> requests.Response:
    with http.post(f"{fake.url}/v2/remove-background", json=body, headers=auth, timeout=5) as r:
        return r


def poll_until_done(
    http: requests.Session, status_url: str, auth: dict[str, str]
) -> dict[str, Any]:
    for _ in range(200):
        with http.get(status_url, headers=auth, timeout=5) as response:
            assert response.status_code == 200
            body: dict[str, Any] = response.json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.01)
    raise AssertionError("job never finished")


def test_ims_issues_tokens_and_rejects_bad_credentials(
    fake: FakePhotoshop, http: requests.Session
) -> None:
    fake.token_expires_in = 1234
    form = {"grant_type": "client_credentials", "client_id": fake.client_id, "scope": SCOPE}
    with http.post(fake.ims_url, data={**form, "client_secret": "nope"}, timeout=5) as response:
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
    with http.post(
        fake.ims_url, data={**form, "client_secret": fake.client_secret}, timeout=5
    ) as response:
        assert response.status_code == 200
        body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 1234
    assert fake.token_requests == 2


def test_gateway_checks_token_and_api_key(fake: FakePhotoshop, http: requests.Session) -> None:
    body = {"image": {"source": {"url": fake.host_input("a.png", shape_image())}}}
    no_token = submit(fake, http, body, {"x-api-key": fake.client_id})
    assert (no_token.status_code, no_token.json()["error_code"]) == (401, "401013")
    auth = headers(fake, http)
    wrong_key = submit(fake, http, body, {**auth, "x-api-key": "other"})
    assert (wrong_key.status_code, wrong_key.json()["error_code"]) == (403, "403003")
    fake.revoke_tokens()
    revoked = submit(fake, http, body, auth)
    assert revoked.status_code == 401
    assert fake.submissions == 0


def test_submit_validates_the_request(fake: FakePhotoshop, http: requests.Session) -> None:
    auth = headers(fake, http)
    url = f"{fake.url}/v2/remove-background"
    with http.post(url, data="{}", headers=auth, timeout=5) as response:
        assert response.json()["error_code"] == "invalid_content_type"
    json_auth = {**auth, "Content-Type": "application/json"}
    with http.post(url, data="{not json", headers=json_auth, timeout=5) as response:
        assert (response.status_code, response.json()["error_code"]) == (400, "invalid_json")
    missing = submit(fake, http, {"mode": "cutout"}, auth)
    assert (missing.status_code, missing.json()["error_code"]) == (400, "validation_error")
    assert "image.source.url" in missing.json()["message"]
    source = {"source": {"url": fake.host_input("a.png", shape_image())}}
    bad = submit(fake, http, {"image": source, "mode": "blur", "output": {"mediaType": "x"}}, auth)
    assert bad.status_code == 400
    assert len(bad.json()["errors"]) == 2
    color = submit(fake, http, {"image": source, "backgroundColor": {"red": 1}}, auth)
    assert color.json()["error_code"] == "validation_error"
    with http.get(url, headers=auth, timeout=5) as response:
        assert response.json()["error_code"] == "unsupported_method"
    assert fake.submissions == 0


def test_rejects_images_over_6000_px(fake: FakePhotoshop, http: requests.Session) -> None:
    url = fake.host_input("wide.png", shape_image(size=(7000, 10)))
    response = submit(fake, http, {"image": {"source": {"url": url}}}, headers(fake, http))
    assert (response.status_code, response.json()["error_code"]) == (400, "validation_error")
    assert "7000x10" in response.json()["message"]


def test_job_runs_pending_running_succeeded(fake: FakePhotoshop, http: requests.Session) -> None:
    fake.latency = 0.3
    auth = headers(fake, http)
    source = fake.host_input("a.png", shape_image())
    body = {"image": {"source": {"url": source}}, "output": {"mediaType": "image/png"}}
    accepted = submit(fake, http, body, auth)
    assert accepted.status_code == 202
    job_id, status_url = accepted.json()["jobId"], accepted.json()["statusUrl"]
    assert job_id.startswith("urn:ff:jobs:") and job_id.count(":") >= 3
    assert status_url == f"{fake.url}/v2/status/{job_id}"
    seen = []
    for _ in range(100):
        with http.get(status_url, headers=auth, timeout=5) as response:
            seen.append(response.json()["status"])
        if seen[-1] == "succeeded":
            break
        time.sleep(0.03)
    assert seen[0] == "pending" and "running" in seen and seen[-1] == "succeeded"
    with http.get(status_url, headers=auth, timeout=5) as response:
        output = response.json()["result"]["outputs"][0]
    assert output["mediaType"] == "image/png"
    with http.get(output["destination"]["url"], timeout=5) as response:
        assert response.status_code == 200
        assert response.content.startswith(b"\x89PNG")
    assert fake.submissions_for(source) == 1
    assert fake.polls_of(job_id) == len(seen) + 1


def test_unknown_job_is_404(fake: FakePhotoshop, http: requests.Session) -> None:
    url = f"{fake.url}/v2/status/urn:ff:jobs:fake:nope"
    with http.get(url, headers=headers(fake, http), timeout=5) as response:
        assert (response.status_code, response.json()["error_code"]) == (404, "unknown_job_id")


def test_results_expire(fake: FakePhotoshop, http: requests.Session) -> None:
    auth = headers(fake, http)
    source = fake.host_input("a.png", shape_image())
    accepted = submit(fake, http, {"image": {"source": {"url": source}}}, auth)
    body = poll_until_done(http, accepted.json()["statusUrl"], auth)
    result_url = body["result"]["outputs"][0]["destination"]["url"]
    with http.get(result_url.split("?")[0] + "?sig=forged", timeout=5) as response:
        assert response.status_code == 403
    fake.expire_results()
    with http.get(result_url, timeout=5) as response:
        assert response.status_code == 410


def test_results_expire_after_ttl() -> None:
    now = [0.0]
    with FakePhotoshop(clock=lambda: now[0], result_ttl=60) as fake, requests.Session() as http:
        auth = headers(fake, http)
        source = fake.host_input("a.png", shape_image())
        accepted = submit(fake, http, {"image": {"source": {"url": source}}}, auth)
        body = poll_until_done(http, accepted.json()["statusUrl"], auth)
        result_url = body["result"]["outputs"][0]["destination"]["url"]
        now[0] = 59.0
        with http.get(result_url, timeout=5) as response:
            assert response.status_code == 200
        now[0] = 61.0
        with http.get(result_url, timeout=5) as response:
            assert response.status_code == 410


def test_default_output_is_the_input_format(fake: FakePhotoshop, http: requests.Session) -> None:
    auth = headers(fake, http)
    source = fake.host_input("a.jpg", shape_image("JPEG"), "image/jpeg")
    accepted = submit(fake, http, {"image": {"source": {"url": source}}}, auth)
    body = poll_until_done(http, accepted.json()["statusUrl"], auth)
    output = body["result"]["outputs"][0]
    assert output["mediaType"] == "image/jpeg"
    with http.get(output["destination"]["url"], timeout=5) as response:
        data = response.content
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")


def test_url_variant_and_failed_jobs(fake: FakePhotoshop, http: requests.Session) -> None:
    auth = headers(fake, http)
    source = fake.host_input("a.png", shape_image())
    fake.url_variant = "url"
    accepted = submit(fake, http, {"image": {"source": {"url": source}}}, auth)
    output = poll_until_done(http, accepted.json()["statusUrl"], auth)["result"]["outputs"][0]
    assert "destination" not in output and output["url"].startswith(fake.url)
    fake.fail_next_jobs(1, "400401", "The image is not supported")
    accepted = submit(fake, http, {"image": {"source": {"url": source}}}, auth)
    body = poll_until_done(http, accepted.json()["statusUrl"], auth)
    assert body["status"] == "failed"
    assert body["errorDetails"] == [
        {"errorCode": "400401", "message": "The image is not supported"}
    ]


def test_input_fetched_at_processing_when_not_validated(
    fake: FakePhotoshop, http: requests.Session
) -> None:
    fake.validate_at_submit = False
    auth = headers(fake, http)
    source = fake.host_input("gone.png", shape_image())
    accepted = submit(fake, http, {"image": {"source": {"url": source}}}, auth)
    assert fake.input_fetches == 0
    fake.remove_input("gone.png")
    body = poll_until_done(http, accepted.json()["statusUrl"], auth)
    assert body["status"] == "failed"
    assert "HTTP 404" in body["errorDetails"][0]["message"]


def test_sliding_window_rate_limit() -> None:
    with FakePhotoshop(submit_limit=2, submit_period=0.5) as fake, requests.Session() as http:
        auth = headers(fake, http)
        body = {"image": {"source": {"url": fake.host_input("a.png", shape_image())}}}
        codes = [submit(fake, http, body, auth).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        limited = submit(fake, http, body, auth)
        assert limited.json()["error_code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        time.sleep(0.55)
        assert submit(fake, http, body, auth).status_code == 202
        assert (fake.submissions, fake.rate_limited) == (3, 2)
        fake.force_rate_limit(1, retry_after=0.25)
        time.sleep(0.55)
        forced = submit(fake, http, body, auth)
        assert (forced.status_code, forced.headers["Retry-After"]) == (429, "0.25")


def test_injected_faults(fake: FakePhotoshop, http: requests.Session) -> None:
    auth = headers(fake, http)
    body = {"image": {"source": {"url": fake.host_input("a.png", shape_image())}}}
    fake.inject_errors(1, status=503)
    failed = submit(fake, http, body, auth)
    assert (failed.status_code, failed.json()["error_code"]) == (503, "runtime_error")
    fake.reject_next_calls(1)
    assert submit(fake, http, body, auth).status_code == 401
    assert submit(fake, http, body, auth).status_code == 202
    fake.slow_seconds = 0.3
    with pytest.raises(requests.Timeout):
        http.post(f"{fake.url}/v2/remove-background", json=body, headers=auth, timeout=0.1)


def test_cutout_modes() -> None:
    data = shape_image()
    truth = np.zeros((80, 120), dtype=bool)
    truth[20:60, 30:90] = True
    png, media_type = make_cutout(data, {"output": {"mediaType": "image/png"}})
    with Image.open(io.BytesIO(png)) as image:
        assert (media_type, image.mode) == ("image/png", "RGBA")
        assert np.array_equal(np.asarray(image.getchannel("A")) > 127, truth)
    mask, _ = make_cutout(data, {"mode": "mask", "trim": True})
    with Image.open(io.BytesIO(mask)) as image:
        assert (image.mode, image.size) == ("L", (60, 40))
    color = {"red": 0, "green": 0, "blue": 255, "alpha": 1}
    webp, media_type = make_cutout(
        data, {"backgroundColor": color, "output": {"mediaType": "image/webp"}}
    )
    with Image.open(io.BytesIO(webp)) as image:
        pixels = np.asarray(image.convert("RGBA"))
    assert media_type == "image/webp"
    assert pixels[..., 3].min() == 255
    assert tuple(pixels[0, 0]) == (0, 0, 255, 255)
    assert tuple(pixels[40, 60][:3]) == (200, 20, 20)


def test_reset_delay_and_expire_next_calls(fake: FakePhotoshop, http: requests.Session) -> None:
    auth = headers(fake, http)
    body = {"image": {"source": {"url": fake.host_input("a.png", shape_image())}}}
    fake.reset_next_calls(1, where="submit")
    with pytest.raises(requests.ConnectionError):
        submit(fake, http, body, auth)
    assert fake.submissions == 0
    fake.delay_next_calls(1, 0.3, where="submit")
    with pytest.raises(requests.Timeout):
        http.post(f"{fake.url}/v2/remove-background", json=body, headers=auth, timeout=0.1)
    deadline = time.monotonic() + 5
    while fake.submissions == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.submissions == 1  # carried out although the client gave up: a duplicate
    accepted = submit(fake, http, body, auth)
    done = poll_until_done(http, accepted.json()["statusUrl"], auth)
    result_url = done["result"]["outputs"][0]["destination"]["url"]
    fake.expire_next_results(1)
    with http.get(result_url, timeout=5) as response:
        assert response.status_code == 410
    with http.get(result_url, timeout=5) as response:
        assert response.status_code == 200
    assert fake.troubles_served == {"reset": 1, "delay": 1, "expire": 1}
