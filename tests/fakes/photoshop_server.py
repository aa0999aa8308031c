"""An HTTP fake of Adobe IMS and the Photoshop API Remove Background V2, on 127.0.0.1.

Faithful to ../shared/reference/cloud-apis.md, Part 1 (section 1.10 in particular):

- `POST /ims/token/v3` (form body, client-credentials grant) -> `access_token`, `expires_in`.
- `POST /v2/remove-background` -> 202 `{"jobId": "urn:ff:jobs:fake:<uuid>", "statusUrl": ...}`
  after the gateway checks (Bearer token: 401 `401013`; `x-api-key`: 403 `403003`), a
  sliding-window submit limit (429 + Retry-After, `rate_limited`) and validation
  (`invalid_content_type`, `invalid_json`, `validation_error`).
- `GET /v2/status/{jobId}`: pending -> running -> succeeded | failed as the job's latency
  passes; 404 `unknown_job_id`.
- `GET /results/<token>?sig=...`: the Adobe-hosted result, 410 once it expired.
- `GET /inputs/<name>?token=...`: input files the tests host (`host_input`), standing in for
  Dropbox temporary links.

Jobs make a real cutout: a chroma key against the background colour estimated from the image
border (enough for shapes on a flat background), honouring `mode`, `output.mediaType` (the
input's format when absent: a JPEG input gives a JPEG, without alpha), `trim` and
`backgroundColor`. The input is fetched with `requests` from `image.source.url` (over HTTPS
with the CA bundle given as `verify`, e.g. the Dropbox fake's temporary links).
"""

from __future__ import annotations

import io
import json
import math
import random
import secrets
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import requests
from PIL import Image

MODES = ("cutout", "mask", "psd")
MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/vnd.adobe.photoshop")
PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/tiff": "TIFF"}
INPUT_MEDIA_TYPES = {v: k for k, v in PIL_FORMATS.items()}
TOKEN_INVALID = {"error_code": "401013", "message": "Oauth token is not valid"}
API_KEY_INVALID = {"error_code": "403003", "message": "Api Key is invalid"}
KEY_LOW, KEY_HIGH = 30.0, 60.0  # colour distance from the background: alpha 0 below, 255 above

Latency = float | tuple[float, float]


class FakeError(Exception):
    """Answer the current request with this status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(f"{status} {body}")
        self.status, self.body, self.headers = status, body, headers or {}


def _validation_error(*messages: str) -> FakeError:
    body: dict[str, Any] = {"error_code": "validation_error", "message": messages[0]}
    if len(messages) > 1:
        body["errors"] = [{"error_code": "validation_error", "message": m} for m in messages]
    return FakeError(400, body)


@dataclass
class FakeJob:
    job_id: str
    body: dict[str, Any]
    source_url: str
    created: float
    latency: float
    failure: tuple[str, str] | None = None  # (errorCode, message) to end with
    input_data: bytes | None = None
    status: str = "pending"
    error_details: list[dict[str, str]] = field(default_factory=list)
    result_token: str | None = None
    result_media_type: str | None = None
    polls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def source_name(job: FakeJob) -> str:
    """The input file name a job was submitted for (the last segment of its link)."""
    return unquote(job.source_url.rsplit("/", 1)[1])


@dataclass
class _Result:
    data: bytes
    media_type: str
    signature: str
    created: float
    expired: bool = False


class FakePhotoshop:
    """The fake server. Knobs are public attributes or `inject_*`-style methods; counters
    are public attributes (read them after the calls finished, or under `lock`)."""

    def __init__(
        self,
        *,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        token_expires_in: int = 86399,
        submit_limit: int = 3,
        submit_period: float = 3.0,
        latency: Latency = 0.0,
        result_ttl: float | None = 3600.0,
        max_dimension: int = 6000,
        validate_at_submit: bool = True,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        verify: bool | str = True,
    ) -> None:
        """`verify`: how input fetches check TLS, as `requests`' per-request `verify` (a CA
        bundle path wins over REQUESTS_CA_BUNDLE); `FakeDropbox(https=True).ca_path` lets the
        fake fetch that fake's temporary links."""
        self.lock = threading.RLock()
        self.clock = clock
        self._random = random.Random(seed)
        # knobs
        self.client_id, self.client_secret = client_id, client_secret
        self.token_expires_in = token_expires_in
        self.ims_error_status = 401
        self.submit_limit, self.submit_period = submit_limit, submit_period
        self.retry_after: float | None = None  # Retry-After to send; None: the window's rest
        self.latency: Latency = latency
        self.result_ttl = result_ttl
        self.result_expired_status = 410
        self.max_dimension = max_dimension
        self.validate_at_submit = validate_at_submit
        self.allowed_domains: tuple[str, ...] | None = None  # None: any host may serve inputs
        self.url_variant = "destination"  # or "url": result.outputs[0].url
        self.slow_seconds = 0.0  # delay before answering IMS and API calls
        # counters
        self.token_requests = 0
        self.submissions = 0  # accepted (202)
        self.submissions_by_source: Counter[str] = Counter()  # input URL without query
        self.submit_times: list[float] = []  # requests that passed the gateway's limiter
        self.rate_limited = 0  # 429s served
        self.status_polls = 0
        self.result_fetches = 0
        self.input_fetches = 0
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        # state
        self.jobs: dict[str, FakeJob] = {}
        self._tokens: dict[str, float] = {}  # token -> expiry
        self._results: dict[str, _Result] = {}
        self._inputs: dict[str, tuple[bytes, str]] = {}
        self._injected_errors: list[tuple[str, int, str]] = []  # (where, status, code)
        self._failures: list[tuple[str, str]] = []
        self._reject_calls = 0
        self._forced_429 = 0
        self._troubles: list[tuple[str, str, float]] = []  # (where, reset|delay|expire, s)
        self.troubles_served: Counter[str] = Counter()  # reset | delay | expire
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.verify = verify
        self._http = requests.Session()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakePhotoshop:
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
        self._http.close()

    def __enter__(self) -> FakePhotoshop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API base URL (`photoshop.api_url`)."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def ims_url(self) -> str:
        return f"{self.url}/ims/token/v3"

    # -- test helpers and knobs -------------------------------------------------------------

    def host_input(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        """Serve `data` at a URL with a query token, like a Dropbox temporary link."""
        with self.lock:
            self._inputs[name] = (data, content_type)
        return f"{self.url}/inputs/{name}?token={secrets.token_urlsafe(8)}"

    def remove_input(self, name: str) -> None:
        with self.lock:
            self._inputs.pop(name, None)

    def inject_errors(
        self,
        count: int,
        status: int = 500,
        where: str = "submit",
        error_code: str = "runtime_error",
    ) -> None:
        """The next `count` calls to `where` (`submit`, `status`, `ims` or `any`) answer
        `status` with this `error_code` (e.g. 403 `unauthorized_forbidden`: quota)."""
        with self.lock:
            self._injected_errors.extend([(where, status, error_code)] * count)

    def fail_next_jobs(
        self, count: int, error_code: str = "runtime_error", message: str = "injected failure"
    ) -> None:
        """The next `count` accepted jobs end `failed` with this `errorDetails` entry."""
        with self.lock:
            self._failures.extend([(error_code, message)] * count)

    def reject_next_calls(self, count: int) -> None:
        """The next `count` API calls answer 401 `401013`, whatever the token."""
        with self.lock:
            self._reject_calls += count

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (401 `401013`); new ones work."""
        with self.lock:
            self._tokens.clear()

    def force_rate_limit(self, count: int, retry_after: float | None = None) -> None:
        """The next `count` submissions answer 429, with this Retry-After when given."""
        with self.lock:
            self._forced_429 += count
            if retry_after is not None:
                self.retry_after = retry_after

    def expire_results(self) -> None:
        """Every result URL issued so far answers `result_expired_status` from now on."""
        with self.lock:
            for result in self._results.values():
                result.expired = True

    def reset_next_calls(self, count: int, where: str = "any") -> None:
        """The next `count` requests to `where` (`ims`, `submit`, `status`, `result`,
        `input` or `any`) get a TCP reset instead of an answer and are not carried out."""
        with self.lock:
            self._troubles.extend([(where, "reset", 0.0)] * count)

    def delay_next_calls(self, count: int, seconds: float, where: str = "any") -> None:
        """The next `count` requests to `where` wait `seconds` before they are handled, and
        are handled even if the client gave up meanwhile (as a real server would)."""
        with self.lock:
            self._troubles.extend([(where, "delay", seconds)] * count)

    def expire_next_results(self, count: int) -> None:
        """The next `count` result downloads answer `result_expired_status`: the URL ran
        out of validity between `succeeded` and the download."""
        with self.lock:
            self._troubles.extend([("result", "expire", 0.0)] * count)

    def take_trouble(self, where: str) -> str | None:
        """Called by the handler before a request is handled: `reset`, `expire` or None
        (after sleeping out a `delay`)."""
        with self.lock:
            found = next((t for t in self._troubles if t[0] in (where, "any")), None)
            if found is None:
                return None
            self._troubles.remove(found)
            self.troubles_served[found[1]] += 1
        _, kind, seconds = found
        if kind == "delay":
            self._closing.wait(seconds)
            return None
        return kind

    def submissions_for(self, url: str) -> int:
        """Accepted submissions whose `image.source.url` was this URL (query ignored)."""
        with self.lock:
            return self.submissions_by_source[_without_query(url)]

    def submissions_by_name(self) -> Counter[str]:
        """Accepted submissions per input file name. Every attempt sends a fresh temporary
        link (`https://<dropbox>/tl/<token>/<name>`), so count by the link's last segment."""
        with self.lock:
            return Counter(source_name(job) for job in self.jobs.values())

    def daemon_environment(self) -> dict[str, str]:
        """The credentials a `cutoutd` process needs for this fake."""
        return {"CLIENT_ID": self.client_id, "CLIENT_SECRET": self.client_secret}

    def polls_of(self, job_id: str) -> int:
        with self.lock:
            job = self.jobs.get(job_id)
            return job.polls if job else 0

    # -- request handling (called by the handler threads) -------------------------------------

    def _slow_down(self) -> None:
        if self.slow_seconds > 0:
            self._closing.wait(self.slow_seconds)

    def _take_injected(self, where: str) -> None:
        with self.lock:
            for index, (target, status, code) in enumerate(self._injected_errors):
                if target in (where, "any"):
                    del self._injected_errors[index]
                    raise FakeError(status, {"error_code": code, "message": "injected error"})

    def handle_ims(self, form: dict[str, str]) -> dict[str, Any]:
        self._slow_down()
        self._take_injected("ims")
        with self.lock:
            self.token_requests += 1
            if form.get("grant_type") != "client_credentials":
                raise FakeError(
                    400,
                    {
                        "error": "unsupported_grant_type",
                        "error_description": "grant_type must be client_credentials",
                    },
                )
            if (
                form.get("client_id") != self.client_id
                or form.get("client_secret") != self.client_secret
            ):
                raise FakeError(
                    self.ims_error_status,
                    {"error": "invalid_client", "error_description": "invalid client credentials"},
                )
            if not form.get("scope"):
                raise FakeError(400, {"error": "invalid_scope", "error_description": "no scope"})
            token = f"fake-ims-{secrets.token_urlsafe(24)}"
            self._tokens[token] = self.clock() + self.token_expires_in
            return {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_expires_in,
            }

    def check_gateway(self, headers: Any) -> None:
        """Bearer token and x-api-key, as Adobe's I/O gateway does."""
        with self.lock:
            if self._reject_calls > 0:
                self._reject_calls -= 1
                raise FakeError(401, TOKEN_INVALID)
            authorization = headers.get("Authorization") or ""
            token = authorization.removeprefix("Bearer ")
            expiry = self._tokens.get(token) if authorization.startswith("Bearer ") else None
            if expiry is None or expiry <= self.clock():
                raise FakeError(401, TOKEN_INVALID)
            if headers.get("x-api-key") != self.client_id:
                raise FakeError(403, API_KEY_INVALID)

    def handle_submit(self, headers: Any, raw: bytes) -> dict[str, Any]:
        self._slow_down()
        self.check_gateway(headers)
        self._take_injected("submit")
        self._check_rate()
        if not (headers.get("Content-Type") or "").startswith("application/json"):
            raise FakeError(
                400,
                {
                    "error_code": "invalid_content_type",
                    "message": "Content-Type must be application/json",
                },
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise FakeError(
                400, {"error_code": "invalid_json", "message": "invalid JSON"}
            ) from None
        source_url = _validate_request(body, self.allowed_domains)
        input_data = self._fetch_and_check(source_url) if self.validate_at_submit else None
        return self._accept(body, source_url, input_data)

    def _check_rate(self) -> None:
        with self.lock:
            now = self.clock()
            window = [t for t in self.submit_times if t > now - self.submit_period]
            forced = self._forced_429 > 0
            if not forced and len(window) < self.submit_limit:
                self.submit_times.append(now)
                return
            self._forced_429 -= 1 if forced else 0
            self.rate_limited += 1
            rest = window[0] + self.submit_period - now if window else self.submit_period
            retry_after = (
                f"{self.retry_after:g}"
                if self.retry_after is not None
                else str(max(1, math.ceil(rest)))
            )
        raise FakeError(
            429,
            {"error_code": "rate_limited", "message": "Too many requests."},
            {"Retry-After": retry_after},
        )

    def _fetch_and_check(self, source_url: str) -> bytes:
        try:
            data = self._fetch_input(source_url)
            width, height = _dimensions(data)
        except ValueError as exc:
            raise _validation_error(f"image.source.url: {exc}") from None
        if max(width, height) > self.max_dimension:
            raise _validation_error(
                f"image dimensions {width}x{height} exceed the maximum of "
                f"{self.max_dimension}x{self.max_dimension} pixels"
            )
        return data

    def _fetch_input(self, source_url: str) -> bytes:
        try:
            with self._http.get(source_url, timeout=10, verify=self.verify) as response:
                if response.status_code != 200:
                    raise ValueError(f"could not fetch the image (HTTP {response.status_code})")
                return response.content
        except requests.RequestException as exc:
            raise ValueError(f"could not fetch the image ({type(exc).__name__})") from None

    def _accept(self, body: dict[str, Any], source_url: str, data: bytes | None) -> dict[str, Any]:
        with self.lock:
            job = FakeJob(
                job_id=f"urn:ff:jobs:fake:{uuid.uuid4()}",
                body=body,
                source_url=source_url,
                created=self.clock(),
                latency=self._draw_latency(),
                failure=self._failures.pop(0) if self._failures else None,
                input_data=data,
            )
            self.jobs[job.job_id] = job
            self.submissions += 1
            self.submissions_by_source[_without_query(source_url)] += 1
            return {"jobId": job.job_id, "statusUrl": f"{self.url}/v2/status/{job.job_id}"}

    def _draw_latency(self) -> float:
        if isinstance(self.latency, tuple):
            return self._random.uniform(*self.latency)
        return float(self.latency)

    def handle_status(self, headers: Any, job_id: str) -> dict[str, Any]:
        self._slow_down()
        self.check_gateway(headers)
        self._take_injected("status")
        with self.lock:
            self.status_polls += 1
            job = self.jobs.get(job_id)
            if job is None:
                raise FakeError(
                    404, {"error_code": "unknown_job_id", "message": f"no job {job_id}"}
                )
            job.polls += 1
            elapsed = self.clock() - job.created
        if elapsed >= job.latency:
            self._complete(job)
        elif elapsed >= job.latency / 4:
            job.status = "running"
        return self._status_body(job)

    def _complete(self, job: FakeJob) -> None:
        with job.lock:
            if job.status in ("succeeded", "failed"):
                return
            if job.failure is not None:
                self._fail(job, *job.failure)
                return
            try:
                data = job.input_data or self._fetch_input(job.source_url)
                output, media_type = make_cutout(data, job.body)
            except (ValueError, OSError) as exc:
                self._fail(job, "input_error", f"cannot process image.source.url: {exc}")
                return
            token = secrets.token_urlsafe(16)
            with self.lock:
                self._results[token] = _Result(
                    output, media_type, secrets.token_hex(8), self.clock()
                )
            job.result_token, job.result_media_type, job.status = token, media_type, "succeeded"

    @staticmethod
    def _fail(job: FakeJob, code: str, message: str) -> None:
        job.error_details = [{"errorCode": code, "message": message}]
        job.status = "failed"

    def _status_body(self, job: FakeJob) -> dict[str, Any]:
        body: dict[str, Any] = {"jobId": job.job_id, "status": job.status}
        if job.status == "failed":
            body["errorDetails"] = job.error_details
        if job.status == "succeeded" and job.result_token:
            with self.lock:
                signature = self._results[job.result_token].signature
            url = f"{self.url}/results/{job.result_token}?sig={signature}"
            output: dict[str, Any] = {"mediaType": job.result_media_type}
            output.update(
                {"url": url} if self.url_variant == "url" else {"destination": {"url": url}}
            )
            body["result"] = {"outputs": [output]}
        return body

    def handle_result(self, token: str, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        with self.lock:
            self.result_fetches += 1
            result = self._results.get(token)
            if result is None or query.get("sig") != [result.signature]:
                return 403, b"AccessDenied", "text/plain"
            too_old = (
                self.result_ttl is not None and self.clock() - result.created >= self.result_ttl
            )
            if result.expired or too_old:
                return self.result_expired_status, b"Expired", "text/plain"
            return 200, result.data, result.media_type

    def handle_input(self, name: str) -> tuple[int, bytes, str]:
        with self.lock:
            self.input_fetches += 1
            found = self._inputs.get(name)
        if found is None:
            return 404, b"not found", "text/plain"
        return 200, found[0], found[1]

    # -- what the fake handed out, for secret-leak checks ---------------------------------

    @property
    def access_tokens(self) -> list[str]:
        """Every IMS access token issued and not revoked."""
        with self.lock:
            return list(self._tokens)

    def result_urls(self) -> list[str]:
        """Every signed result URL issued (`.../results/<token>?sig=<signature>`)."""
        with self.lock:
            return [f"{self.url}/results/{t}?sig={r.signature}" for t, r in self._results.items()]


def _where(path: str) -> str:
    """Which kind of call a request path is, for the `*_next_calls` knobs."""
    for prefix, where in (
        ("/ims/", "ims"),
        ("/v2/remove-background", "submit"),
        ("/v2/status/", "status"),
        ("/results/", "result"),
        ("/inputs/", "input"),
    ):
        if path.startswith(prefix):
            return where
    return "other"


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _validate_request(body: Any, allowed_domains: tuple[str, ...] | None) -> str:
    """The `RemoveBackgroundV2Request` checks; the source URL when they pass."""
    if not isinstance(body, dict):
        raise _validation_error("body must be a JSON object")
    problems: list[str] = []
    image = body.get("image")
    source = image.get("source") if isinstance(image, dict) else None
    url = source.get("url") if isinstance(source, dict) else None
    if not isinstance(url, str) or not url:
        problems.append("image.source.url is required")
    elif allowed_domains is not None and not (urlsplit(url).hostname or "").endswith(
        allowed_domains
    ):
        problems.append("image.source.url: domain not allowed")
    if body.get("mode", "cutout") not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}")
    output = body.get("output", {})
    media_type = output.get("mediaType") if isinstance(output, dict) else None
    if not isinstance(output, dict) or (media_type is not None and media_type not in MEDIA_TYPES):
        problems.append(f"output.mediaType must be one of {', '.join(MEDIA_TYPES)}")
    if not isinstance(body.get("trim", False), bool):
        problems.append("trim must be a boolean")
    problems.extend(_color_problems(body))
    decontamination = body.get("colorDecontamination", 1)
    if not isinstance(decontamination, int | float) or not 0 <= decontamination <= 1:
        problems.append("colorDecontamination must be a number between 0 and 1")
    if not problems and (body.get("mode") == "psd" or media_type == MEDIA_TYPES[3]):
        problems.append("psd output is not implemented by this fake")
    if problems:
        raise _validation_error(*problems)
    return str(url)


def _color_problems(body: dict[str, Any]) -> list[str]:
    color = body.get("backgroundColor")
    if color is None:
        return []
    if not isinstance(color, dict) or set(color) != {"red", "green", "blue", "alpha"}:
        return ["backgroundColor needs exactly red, green, blue and alpha"]
    problems = [
        f"backgroundColor.{k} must be an integer 0-255"
        for k in ("red", "green", "blue")
        if not isinstance(color[k], int) or not 0 <= color[k] <= 255
    ]
    if not isinstance(color["alpha"], int | float) or not 0 <= color["alpha"] <= 1:
        problems.append("backgroundColor.alpha must be a number between 0 and 1")
    return problems


def _dimensions(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in INPUT_MEDIA_TYPES:
                raise ValueError(f"unsupported image format {image.format}")
            return image.size
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not an image ({type(exc).__name__})") from None


def chroma_alpha(rgb: np.ndarray) -> np.ndarray:
    """Alpha (uint8) from the distance to the background colour, the border's median."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    distance = np.sqrt(((rgb - background) ** 2).sum(axis=2))
    alpha = np.clip((distance - KEY_LOW) / (KEY_HIGH - KEY_LOW), 0.0, 1.0)
    result: np.ndarray = (alpha * 255).round().astype(np.uint8)
    return result


def make_cutout(data: bytes, body: dict[str, Any]) -> tuple[bytes, str]:
    """The fake's Remove Background: (encoded output, its media type)."""
    with Image.open(io.BytesIO(data)) as image:
        input_media_type = INPUT_MEDIA_TYPES.get(image.format or "", "image/png")
        if max(image.size) > 20000:
            raise ValueError("image too large for the fake")
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = chroma_alpha(rgb)
    if body.get("trim"):
        rgb, alpha = _trim(rgb, alpha)
    output = body.get("output") or {}
    media_type = output.get("mediaType") or input_media_type
    if body.get("mode", "cutout") == "mask":
        result = Image.fromarray(alpha, "L")
    else:
        result = _compose(rgb, alpha, body.get("backgroundColor"))
    if media_type == "image/jpeg" and result.mode == "RGBA":
        flat = Image.new("RGB", result.size, (255, 255, 255))
        flat.paste(result, mask=result.getchannel("A"))
        result = flat
    buffer = io.BytesIO()
    extra = {"lossless": True} if media_type == "image/webp" else {}
    result.save(buffer, format=PIL_FORMATS[media_type], **extra)
    return buffer.getvalue(), media_type


def _trim(rgb: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, columns = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
    if rows.size == 0:
        return rgb, alpha
    box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    return rgb[box], alpha[box]


def _compose(rgb: np.ndarray, alpha: np.ndarray, color: dict[str, Any] | None) -> Image.Image:
    a = alpha.astype(np.float32)[..., None] / 255.0
    if color is None:
        rgba = np.dstack([rgb, alpha.astype(np.float32)])
    else:
        fill = np.array([color["red"], color["green"], color["blue"]], dtype=np.float32)
        fill_alpha = float(color["alpha"])
        out_alpha = a + fill_alpha * (1.0 - a)
        mixed = rgb * a + fill * fill_alpha * (1.0 - a)
        out_rgb = np.where(out_alpha > 0, mixed / np.maximum(out_alpha, 1e-6), 0.0)
        rgba = np.dstack([out_rgb, out_alpha[..., 0] * 255.0])
    return Image.fromarray(np.clip(rgba, 0, 255).round().astype(np.uint8), "RGBA")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], fake: FakePhotoshop):
        self.fake = fake
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a timeout test) is no error; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        trouble = fake.take_trouble(_where(path))
        if trouble == "reset":
            self._reset()
            return
        if trouble == "expire":
            self._bytes(fake.result_expired_status, b"Expired", "text/plain")
            return
        try:
            if path == "/ims/token/v3" and method == "POST":
                form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
                self._json(200, fake.handle_ims({**{k: v[0] for k, v in query.items()}, **form}))
            elif path == "/v2/remove-background" and method == "POST":
                self._json(202, fake.handle_submit(self.headers, raw))
            elif path.startswith("/v2/status/") and method == "GET":
                self._json(200, fake.handle_status(self.headers, path.removeprefix("/v2/status/")))
            elif path.startswith("/results/") and method == "GET":
                self._bytes(*fake.handle_result(path.removeprefix("/results/"), query))
            elif path.startswith("/inputs/") and method == "GET":
                self._bytes(*fake.handle_input(path.removeprefix("/inputs/")))
            elif path in ("/ims/token/v3", "/v2/remove-background"):
                raise FakeError(405, {"error_code": "unsupported_method", "message": method})
            else:
                raise FakeError(404, {"error_code": "not_found", "message": path})
        except FakeError as exc:
            self._json(exc.status, exc.body, exc.headers)
        except Exception as exc:  # a bug in the fake: say so rather than drop the connection
            self._json(500, {"error_code": "runtime_error", "message": f"fake crashed: {exc!r}"})

    def _json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._record(status)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _bytes(self, status: int, data: bytes, content_type: str) -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        """Close with SO_LINGER 0: the client gets a TCP RST where it waits for an answer."""
        self._record(0)
        self.close_connection = True
        try:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()
        except OSError:
            pass

    def _record(self, status: int) -> None:
        fake = self.server.fake
        with fake.lock:
            fake.log.append((self.command, urlsplit(self.path).path, status))
