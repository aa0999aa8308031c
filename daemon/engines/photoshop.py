"""The Photoshop engine: Adobe's Remove Background V2 over HTTP (`requests`).

Submit `POST {api_url}/v2/remove-background` with a temporary link to the input, store the
job (`record_submission`) before the first poll, poll its `statusUrl` with paced backoff, then
download the Adobe-hosted result at once. Vendor errors become `daemon.errors` classes here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote

import requests

from daemon.config import PhotoshopSettings
from daemon.engines.photoshop_wire import (
    JobTimedOutError,
    Reply,
    ResubmitNeededError,
    StaleJobError,
    check_png,
    describe_exception,
    failed_job_error,
    json_object,
    new_session,
    parse_retry_after,
    poll_delays,
    request_body,
    result_url,
    submit_error,
)
from daemon.engines.ratelimit import Clock, SubmitLimiter, SystemClock
from daemon.errors import (
    AuthError,
    CutoutdError,
    EngineUnavailableError,
    RateLimitedError,
    TransientError,
)
from daemon.models import EncodedCutout, EngineJob, SubmittedJob
from daemon.secrets import read_secret, redact_url, register_secret

log = logging.getLogger(__name__)

SUBMIT_PATH = "/v2/remove-background"
TOKEN_RENEW_MARGIN = 3600.0  # renew the IMS token about an hour before it expires
MAX_RATE_LIMITED_RETRIES = 5  # 429s in a row on one submission before giving up
MAX_POLL_FAILURES = 3  # status polls in a row that may fail before the attempt gives up
EXPIRED_RESULT_STATUSES = frozenset({403, 404, 410})


@dataclass(frozen=True, slots=True)
class PhotoshopStats:
    """Counters since the engine was built, for metrics."""

    submissions: int = 0
    resubmissions: int = 0
    rate_limited: int = 0
    token_fetches: int = 0
    polls: int = 0
    succeeded: int = 0
    failed: int = 0


class _TokenCache:
    """One IMS access token for every thread, renewed before it expires or when rejected."""

    def __init__(self, engine: PhotoshopEngine, clock: Clock) -> None:
        self._engine, self._clock = engine, clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def get(self) -> str:
        with self._lock:
            if self._token is None or self._clock.monotonic() >= self._renew_at:
                token, expires_in = self._engine.fetch_token()
                renew_after = max(expires_in - TOKEN_RENEW_MARGIN, expires_in / 2)
                self._token, self._renew_at = token, self._clock.monotonic() + renew_after
            return self._token

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None


class PhotoshopEngine:
    """Adobe Photoshop API Remove Background V2. Thread-safe: many workers share one."""

    name = "photoshop"

    def __init__(
        self,
        settings: PhotoshopSettings,
        client_id: str,
        client_secret: str,
        stop: threading.Event,
        clock: Clock | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self._settings, self._stop = settings, stop
        self._client_id, self._client_secret = client_id, client_secret
        register_secret(client_secret)
        self._clock: Clock = clock or SystemClock()
        self._own_session = session is None
        self._session = session or new_session(settings.max_in_flight)
        self._tokens = _TokenCache(self, self._clock)
        self._limiter = SubmitLimiter(settings.submit_limit, settings.submit_period, self._clock)
        self._in_flight = threading.BoundedSemaphore(settings.max_in_flight)
        self._counts_lock = threading.Lock()
        self._counts = {f.name: 0 for f in fields(PhotoshopStats)}

    @classmethod
    def from_environment(
        cls, settings: PhotoshopSettings, stop: threading.Event, clock: Clock | None = None
    ) -> PhotoshopEngine:
        """Credentials from `CLIENT_ID` and `CLIENT_SECRET` (environment or systemd credential)."""
        values = {name: read_secret(name) for name in ("CLIENT_ID", "CLIENT_SECRET")}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise AuthError(
                "the Photoshop engine needs the Adobe credentials CLIENT_ID and CLIENT_SECRET "
                f"in the environment or as systemd credentials; missing: {', '.join(missing)}"
            )
        return cls(settings, values["CLIENT_ID"] or "", values["CLIENT_SECRET"] or "", stop, clock)

    def start(self) -> None:
        """Fetch an IMS token once: wrong credentials fail here, not on the first image."""
        try:
            self._tokens.get()
        except TransientError as exc:
            raise EngineUnavailableError(f"cannot get an Adobe IMS token: {exc}") from None

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def stats(self) -> PhotoshopStats:
        with self._counts_lock:
            return PhotoshopStats(**self._counts)

    def cut_out(self, job: EngineJob) -> EncodedCutout:
        with self._in_flight_slot():
            submitted, resumed = job.submitted, job.submitted is not None
            if submitted is None:
                submitted = self._submit(job)
            else:
                log.info(
                    "resuming Adobe job %s",
                    submitted.job_id,
                    extra=_context(job, "cutout.resumed", submitted.job_id),
                )
            try:
                return self._finish(job, submitted, resumed=resumed)
            except ResubmitNeededError as exc:  # e.g. the result URL expired before the download
                return self._resubmit(job, submitted, str(exc))

    # -- one job ---------------------------------------------------------------------------

    def _finish(self, job: EngineJob, submitted: SubmittedJob, *, resumed: bool) -> EncodedCutout:
        try:
            url = self._wait_for_result(submitted, resumed=resumed)
        except CutoutdError:
            self._count("failed")
            raise
        data = self._fetch_result(submitted.job_id, url)
        check_png(submitted.job_id, data)
        self._count("succeeded")
        log.debug(
            "Adobe job %s succeeded (%d bytes)",
            submitted.job_id,
            len(data),
            extra=_context(job, "photoshop.downloaded", submitted.job_id),
        )
        return EncodedCutout(data, f"Adobe job {submitted.job_id}")

    def _resubmit(self, job: EngineJob, old: SubmittedJob, reason: str) -> EncodedCutout:
        self._count("resubmissions")
        submitted = self._submit(job)
        log.warning(
            "Adobe job %s resubmitted as %s: %s",
            old.job_id,
            submitted.job_id,
            reason,
            extra=_context(job, "cutout.resubmitted", submitted.job_id),
        )
        try:
            return self._finish(job, submitted, resumed=False)
        except ResubmitNeededError as exc:
            raise StaleJobError(f"resubmitted once already ({reason}); then {exc}") from None

    def _submit(self, job: EngineJob) -> SubmittedJob:
        reply = self._post_submission(job)
        if reply.status != 202:
            raise submit_error(reply)
        submitted = self._parse_submitted(reply)
        job.record_submission(submitted)  # persist, then poll: a restart resumes, never repays
        self._count("submissions")
        log.debug(
            "submitted to Adobe as job %s",
            submitted.job_id,
            extra=_context(job, "photoshop.submitted", submitted.job_id),
        )
        return submitted

    def _post_submission(self, job: EngineJob) -> Reply:
        """POST the job, retrying 429s. Each try takes a fresh temporary link once its slot
        is granted: however long it waited (limiter, Retry-After), Adobe gets a live link."""
        url = self._settings.api_url.rstrip("/") + SUBMIT_PATH
        retry_after = self._settings.submit_period
        for _ in range(MAX_RATE_LIMITED_RETRIES + 1):
            with self._limiter.slot(self._stop):
                link = job.temporary_link()
                body = request_body(link, self._settings.color_decontamination)
                reply = self._call("POST", url, json_body=body)
            if reply.status != 429:
                return reply
            retry_after = parse_retry_after(reply.headers, self._settings.submit_period)
            self._count("rate_limited")
            self._limiter.pause(retry_after)
            log.warning(
                "Adobe rate-limited a submission; retrying after %.1f s",
                retry_after,
                extra={"event": "cutout.rate_limited", "retry_after": retry_after},
            )
        raise RateLimitedError("Adobe kept answering 429 Too Many Requests", retry_after)

    def _parse_submitted(self, reply: Reply) -> SubmittedJob:
        job_id = reply.body.get("jobId")
        if not isinstance(job_id, str) or not job_id:
            raise TransientError(
                f"Adobe accepted a submission without a jobId ({reply.describe()})"
            )
        status_url = reply.body.get("statusUrl")
        if not isinstance(status_url, str) or not status_url:
            status_url = f"{self._settings.api_url.rstrip('/')}/v2/status/{quote(job_id, safe=':')}"
        return SubmittedJob(job_id=job_id, status_url=status_url)

    def _wait_for_result(self, submitted: SubmittedJob, *, resumed: bool) -> str:
        """Poll the job until it ends; the result URL on success."""
        settings = self._settings
        deadline = self._clock.monotonic() + settings.job_timeout
        delays = poll_delays(settings)
        delay, failures = (0.0 if resumed else next(delays)), 0
        while True:
            if self._clock.wait(self._stop, delay):
                raise TransientError(f"stopped while polling job {submitted.job_id}")
            body = self._poll(submitted, resumed=resumed)
            failures = failures + 1 if body is None else 0
            if failures > MAX_POLL_FAILURES:
                raise TransientError(f"status of job {submitted.job_id} failed {failures} times")
            status = body.get("status") if body else None
            if body and status == "succeeded":
                return result_url(submitted.job_id, body)
            if body and status == "failed":
                raise failed_job_error(submitted.job_id, body, resumed=resumed)
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise JobTimedOutError(
                    f"job {submitted.job_id} timed out: still {status or 'unknown'} after "
                    f"{settings.job_timeout:g} s"
                )
            delay = min(next(delays), remaining)

    def _poll(self, submitted: SubmittedJob, *, resumed: bool) -> dict[str, Any] | None:
        """One status request: its body, or None for a glitch worth another poll."""
        self._count("polls")
        try:
            reply = self._call("GET", submitted.status_url)
        except TransientError as exc:
            log.warning(
                "status poll of job %s failed: %s",
                submitted.job_id,
                exc,
                extra={"event": "cutout.poll_failed", "job_id": submitted.job_id},
            )
            return None
        if reply.status == 200:
            return reply.body
        if reply.status in (400, 404):
            message = f"Adobe does not know job {submitted.job_id} ({reply.describe()})"
            raise ResubmitNeededError(message) if resumed else StaleJobError(message)
        log.warning(
            "status poll of job %s: %s",
            submitted.job_id,
            reply.describe(),
            extra={"event": "cutout.poll_failed", "job_id": submitted.job_id},
        )
        return None

    def _fetch_result(self, job_id: str, url: str) -> bytes:
        """Download the Adobe-hosted result. No credentials go with it: it is pre-signed."""
        try:
            with self._session.get(url, timeout=self._settings.request_timeout) as response:
                if response.status_code in EXPIRED_RESULT_STATUSES:
                    raise ResubmitNeededError(
                        f"the result URL of job {job_id} expired (HTTP {response.status_code})"
                    )
                if response.status_code != 200:
                    raise TransientError(
                        f"downloading the result of job {job_id}: HTTP {response.status_code}"
                    )
                return response.content
        except requests.RequestException as exc:
            raise TransientError(
                f"downloading the result of job {job_id} from {redact_url(url)} failed: "
                f"{describe_exception(exc)}"
            ) from None

    # -- HTTP plumbing -----------------------------------------------------------------------

    def fetch_token(self) -> tuple[str, float]:
        """A new IMS access token and its lifetime in seconds (client-credentials grant)."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "scope": ",".join(self._settings.scopes),
        }
        reply = self._send("POST", self._settings.ims_url, data=form)
        token = reply.body.get("access_token")
        if reply.status == 200 and isinstance(token, str) and token:
            register_secret(token)
            expires_in = float(reply.body.get("expires_in") or 86399)
            self._count("token_fetches")
            log.info(
                "got an Adobe IMS access token valid for %.0f s",
                expires_in,
                extra={"event": "photoshop.token_fetched", "expires_in": expires_in},
            )
            return token, expires_in
        if reply.status in (400, 401, 403):
            raise AuthError(
                f"Adobe IMS rejected the client credentials ({reply.error_code or reply.status}): "
                "check CLIENT_ID, CLIENT_SECRET and photoshop.scopes against the Developer "
                "Console project."
            )
        raise TransientError(f"Adobe IMS answered {reply.describe()}")

    def _call(self, method: str, url: str, json_body: dict[str, Any] | None = None) -> Reply:
        """An authenticated API request; a 401 renews the token and tries once more."""
        for renewed in (False, True):
            token = self._tokens.get()
            headers = {"Authorization": f"Bearer {token}", "x-api-key": self._client_id}
            reply = self._send(method, url, headers=headers, json_body=json_body)
            if reply.status == 403 and reply.error_code == "403003":
                raise AuthError("Adobe rejected the API key: check CLIENT_ID.")
            if reply.status != 401:
                return reply
            self._tokens.invalidate(token)
            if renewed:
                raise AuthError(
                    f"Adobe rejected a freshly issued access token ({reply.describe()}): "
                    "check that the Developer Console project includes the Photoshop API."
                )
            log.info(
                "Adobe rejected the access token; fetching a new one",
                extra={"event": "photoshop.token_rejected"},
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> Reply:
        timeout = self._settings.request_timeout
        try:
            with self._session.request(
                method, url, headers=headers, data=data, json=json_body, timeout=timeout
            ) as response:
                return Reply(response.status_code, json_object(response), response.headers)
        except requests.Timeout:
            raise TransientError(
                f"{method} {redact_url(url)} timed out after {timeout:g} s"
            ) from None
        except requests.RequestException as exc:
            raise TransientError(
                f"{method} {redact_url(url)} failed: {describe_exception(exc)}"
            ) from None

    @contextmanager
    def _in_flight_slot(self) -> Iterator[None]:
        while not self._in_flight.acquire(timeout=0.1):
            if self._stop.is_set():
                raise TransientError("stopped while waiting for an in-flight slot")
        try:
            yield
        finally:
            self._in_flight.release()

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1


def _context(job: EngineJob, event: str, job_id: str) -> dict[str, Any]:
    item = job.item
    return {
        "event": event,
        "path": item.path,
        "rev": item.rev,
        "job_id": job_id,
        "attempt": item.attempts,
    }
