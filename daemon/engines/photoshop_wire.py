"""The Photoshop engine's wire format: request bodies, replies, Adobe's answers turned into
`daemon.errors` classes, and the pooled HTTP session. No request is sent from here."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from daemon.config import PhotoshopSettings
from daemon.errors import CutoutdError, PermanentItemError, TransientError
from daemon.secrets import redact

_SERVER_SIDE_WORDS = ("runtime", "internal", "timeout", "timed_out", "unavailable", "server")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class StaleJobError(TransientError):
    """The stored remote job can give no result (failed on Adobe's side, unknown to Adobe):
    retry later with a NEW submission. `forget_job` tells the pipeline to clear the stored
    `job_id`/`status_url`, so the next attempt submits instead of resuming."""

    forget_job = True


class JobTimedOutError(StaleJobError):
    """The remote job did not finish within `photoshop.job_timeout`; resubmit next attempt."""


class ResubmitNeededError(Exception):
    """Internal: the job's result is out of reach; one new submission may fix it."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]

    @property
    def error_code(self) -> str:
        return str(self.body.get("error_code") or self.body.get("error") or "")

    def describe(self) -> str:
        message = self.body.get("message") or self.body.get("error_description") or ""
        return f"HTTP {self.status} {self.error_code or '-'}: {message}".rstrip(": ")


def request_body(source_url: str, color_decontamination: float) -> dict[str, Any]:
    """The JSON body of a Remove Background V2 submission: always the full-resolution
    cutout as PNG (alpha kept, no trim, no background), from which every output is
    composed locally. `output.mediaType` is always set: left out, Adobe answers in the
    input's format (a JPEG, without alpha)."""
    return {
        "image": {"source": {"url": source_url}},
        "mode": "cutout",
        "output": {"mediaType": "image/png"},
        "trim": False,
        "colorDecontamination": color_decontamination,
    }


def poll_delays(settings: PhotoshopSettings) -> Iterator[float]:
    """`poll_initial`, growing by `poll_multiplier` up to `poll_max`, then `poll_max` forever."""
    delay = settings.poll_initial
    while True:
        yield min(delay, settings.poll_max)
        delay *= settings.poll_multiplier


def new_session(max_in_flight: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max_in_flight + 4)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def describe_exception(exc: Exception) -> str:
    return f"{type(exc).__name__}: {redact(str(exc))}"


def parse_retry_after(headers: Mapping[str, str], default: float) -> float:
    """Seconds from a Retry-After header (a number or an HTTP date); `default` without one."""
    value = headers.get("Retry-After")
    if not value:
        return default
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def submit_error(reply: Reply) -> CutoutdError:
    what = reply.describe()
    if reply.status in (400, 422):
        return PermanentItemError(f"Adobe rejected the image: {what}")
    if reply.status == 403:
        return TransientError(
            f"Adobe refused the submission ({what}): quota exhausted, high traffic or the "
            "project is not entitled; will retry later"
        )
    if reply.status in (404, 405):
        return TransientError(f"Adobe answered {what} to a submission: check photoshop.api_url")
    if reply.status >= 500:
        return TransientError(f"Adobe had a server error: {what}")
    return PermanentItemError(f"Adobe refused the submission: {what}")


def failed_job_error(job_id: str, body: dict[str, Any], *, resumed: bool) -> Exception:
    """A failed job: permanent for validation-type codes, a fresh try for server-side ones."""
    details = body.get("errorDetails") or body.get("errors") or []
    if isinstance(details, dict):
        details = [details]
    codes, parts = [], []
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict):
            code = str(
                detail.get("errorCode") or detail.get("error_code") or detail.get("code") or ""
            )
            message = str(
                detail.get("message") or detail.get("title") or detail.get("reason") or ""
            )
            codes.append(code)
            parts.append(f"{code}: {message}" if code else message)
    text = f"Adobe job {job_id} failed: {'; '.join(parts) or 'no error details'}"
    if codes and not any(_is_server_side(code) for code in codes):
        return PermanentItemError(text)
    return ResubmitNeededError(text) if resumed else StaleJobError(text)


def _is_server_side(code: str) -> bool:
    lowered = code.lower()
    return lowered.startswith("5") or any(word in lowered for word in _SERVER_SIDE_WORDS)


def result_url(job_id: str, body: dict[str, Any]) -> str:
    """`result.outputs[0].destination.url`, or the documented variant `outputs[0].url`."""
    result = body.get("result")
    outputs = result.get("outputs") if isinstance(result, dict) else body.get("outputs")
    first = outputs[0] if isinstance(outputs, list) and outputs else None
    if isinstance(first, dict):
        destination = first.get("destination")
        url = destination.get("url") if isinstance(destination, dict) else None
        url = url or first.get("url")
        if isinstance(url, str) and url:
            return url
    raise StaleJobError(f"Adobe job {job_id} succeeded without a result URL")


def check_png(job_id: str, data: bytes) -> None:
    if data[:8] != PNG_SIGNATURE:
        raise PermanentItemError(f"Adobe job {job_id} returned something other than image/png")
