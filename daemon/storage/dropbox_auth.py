"""Dropbox credentials: reading them from the environment, and the one-time OAuth2 PKCE
authorization (`cutoutd auth dropbox`) that yields the refresh token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from dropbox.oauth import DropboxOAuth2FlowNoRedirect

from daemon.errors import AuthError, TransientError
from daemon.secrets import read_secret, register_secret


@dataclass(frozen=True, slots=True)
class DropboxCredentials:
    """What the SDK needs to mint access tokens. `app_secret` is optional for PKCE tokens."""

    app_key: str
    app_secret: str | None = field(repr=False)
    refresh_token: str = field(repr=False)

    @classmethod
    def from_environment(cls) -> DropboxCredentials:
        app_key = read_secret("DROPBOX_APP_KEY")
        refresh_token = read_secret("DROPBOX_REFRESH_TOKEN")
        app_secret = read_secret("DROPBOX_APP_SECRET")
        if not app_key or not refresh_token:
            missing = [
                name
                for name, value in (
                    ("DROPBOX_APP_KEY", app_key),
                    ("DROPBOX_REFRESH_TOKEN", refresh_token),
                )
                if not value
            ]
            raise AuthError(
                f"Dropbox credentials are missing: set {' and '.join(missing)} in the environment "
                "or as systemd credentials (`cutoutd auth dropbox` prints them)."
            )
        return cls(app_key, app_secret, refresh_token)


def authorize_dropbox(
    app_key: str,
    app_secret: str | None,
    read_code: Callable[[str], str],
    session: requests.Session | None = None,
) -> dict[str, str]:
    """OAuth2 PKCE without redirect: show the URL, read the code, return the env lines."""
    flow = DropboxOAuth2FlowNoRedirect(app_key, use_pkce=True, token_access_type="offline")
    if session is not None:
        flow.requests_session.close()
        flow.requests_session = session
    try:
        code = read_code(flow.start()).strip()
        if not code:
            raise AuthError("no authorization code was entered: run `cutoutd auth dropbox` again")
        result = flow.finish(code)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise AuthError(
            f"Dropbox did not accept that authorization code (HTTP {status}: expired, already "
            "used, mistyped, or for another app key): run `cutoutd auth dropbox` again"
        ) from None
    except requests.RequestException as exc:
        name = type(exc).__name__
        raise TransientError(f"cannot reach Dropbox to finish authorizing ({name})") from None
    finally:
        if session is None:
            flow.requests_session.close()
    if not result.refresh_token:
        raise AuthError("Dropbox issued no refresh token: the app must allow offline access")
    register_secret(result.refresh_token)
    register_secret(result.access_token)
    lines = {"DROPBOX_APP_KEY": app_key, "DROPBOX_REFRESH_TOKEN": result.refresh_token}
    if app_secret:
        lines["DROPBOX_APP_SECRET"] = app_secret
    return lines
