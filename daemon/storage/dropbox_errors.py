"""Dropbox error translation: the one place where `dropbox` SDK and `requests` errors
become the classes of `daemon.errors` (messages carry no secrets). Used only by the
Dropbox adapter (`daemon.storage.dropbox`)."""

from __future__ import annotations

import threading
from typing import Any

import requests
from dropbox import exceptions as sdk_errors

from daemon.errors import (
    AuthError,
    CursorResetError,
    CutoutdError,
    ItemGoneError,
    PermanentItemError,
    RateLimitedError,
    TransientError,
    UnreachableError,
)
from daemon.secrets import redact

REAUTHORIZE = "run `cutoutd auth dropbox` and store the new DROPBOX_REFRESH_TOKEN"
TRANSIENT_TAGS = frozenset(
    {
        "insufficient_space",
        "internal_error",
        "operation_suppressed",
        "too_many_files",
        "download_failed",
        "locked",
        "insufficient_quota",
    }
)
VENDOR_ERRORS = (sdk_errors.DropboxException, requests.RequestException)
_unavailable = threading.local()  # Retry-After of this thread's last 503 (the SDK drops it)


def note_retry_after(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A `requests` response hook on the SDK's session: remember a 503's Retry-After, which
    the SDK's `InternalServerError` does not keep, so that `translate_error` can honour it."""
    if response.status_code == 503:
        _unavailable.retry_after = _seconds(response.headers.get("Retry-After"))


def _seconds(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:  # an HTTP date: wait the default
        return None


def _take_retry_after() -> float | None:
    retry_after: float | None = getattr(_unavailable, "retry_after", None)
    _unavailable.retry_after = None
    return retry_after


def tag_chain(value: Any) -> list[str]:
    """The union tags along a stone error value: `['path', 'not_found']`."""
    tags: list[str] = []
    for _ in range(10):
        tag = getattr(value, "_tag", None)
        if isinstance(tag, str):
            tags.append(tag)
            value = getattr(value, "_value", None)
            continue
        fields = [_field(value, name) for name in sorted(getattr(value, "_all_field_names_", ()))]
        value = next((v for v in fields if _is_union(v)), None)
        if value is None:
            break
    return tags


def _field(value: Any, name: str) -> Any:
    try:
        return getattr(value, name)
    except Exception:  # stone raises on unset required fields
        return None


def _is_union(value: Any) -> bool:
    return isinstance(getattr(value, "_tag", None), str)


def translate_error(exc: BaseException, where: str) -> CutoutdError:
    """The one place where vendor errors become `daemon.errors` (messages carry no secrets)."""
    if isinstance(exc, sdk_errors.AuthError):
        return _auth_error(exc)
    if isinstance(exc, sdk_errors.RateLimitError):
        reason = "/".join(tag_chain(exc.error)) or "too_many_requests"
        return RateLimitedError(f"Dropbox rate limit ({reason}) on {where}", exc.backoff)
    if isinstance(exc, sdk_errors.BadInputError):
        text = redact(str(exc.message or ""))[:300]
        if any(g in text for g in ("invalid_grant", "invalid_client", "unauthorized_client")):
            return AuthError(
                f"Dropbox rejected the app key, secret or refresh token: {REAUTHORIZE}"
            )
        return PermanentItemError(f"Dropbox rejected the request for {where}: {text}")
    if isinstance(exc, sdk_errors.ApiError):
        return api_error(exc.error, where)
    if isinstance(exc, sdk_errors.InternalServerError) and exc.status_code == 503:
        retry_after = _take_retry_after()
        if retry_after is not None:  # Dropbox sheds load: a rate limit by another name
            return RateLimitedError(f"Dropbox is busy (503) on {where}", retry_after)
    if isinstance(exc, sdk_errors.HttpError):
        message = f"Dropbox answered HTTP {exc.status_code} on {where}"
        transient = exc.status_code >= 500 or exc.status_code in (408, 425)
        return TransientError(message) if transient else PermanentItemError(message)
    if isinstance(exc, requests.ConnectionError):  # refused, reset: Dropbox, not this file
        return UnreachableError(f"cannot reach Dropbox on {where} ({type(exc).__name__})")
    if isinstance(exc, requests.RequestException):
        return TransientError(f"cannot reach Dropbox on {where} ({type(exc).__name__})")
    if isinstance(exc, CutoutdError):
        return exc
    return TransientError(f"unexpected {type(exc).__name__} from Dropbox on {where}")


def _auth_error(exc: Any) -> AuthError:
    tags = tag_chain(exc.error)
    if "missing_scope" in tags:
        return AuthError(
            "the Dropbox app lacks a permission it needs (files.content.read, "
            f"files.content.write, files.metadata.read): enable it, then {REAUTHORIZE}"
        )
    if "expired_access_token" in tags:
        return AuthError(
            "Dropbox keeps rejecting fresh access tokens as expired: check the system clock, "
            f"or {REAUTHORIZE}"
        )
    if "user_suspended" in tags:
        return AuthError("the Dropbox account is suspended")
    return AuthError(f"Dropbox rejected the refresh token (revoked or wrong): {REAUTHORIZE}")


def api_error(error: Any, where: str) -> CutoutdError:
    tags = tag_chain(error)
    summary = "/".join(tags) or "unknown error"
    if "too_many_write_operations" in tags:
        return RateLimitedError(f"Dropbox is busy writing in this folder ({summary}) on {where}")
    if tags[:1] == ["reset"]:
        return CursorResetError(f"the Dropbox cursor was reset on {where}")
    if "not_found" in tags:
        return ItemGoneError(f"{where}: not found in Dropbox ({summary})")
    if TRANSIENT_TAGS.intersection(tags):
        return TransientError(f"Dropbox could not complete {where} for now ({summary})")
    return PermanentItemError(f"Dropbox refused {where} ({summary})")
