"""Who may press the buttons: one token, taken once, kept in a cookie.

The token comes from the credential named by `[http] token_credential` (environment or
systemd credential). The cookie holds an HMAC of it, never the token itself, marked
`HttpOnly` and `SameSite=Strict` (and `Secure` over HTTPS). Every write is a POST that
must carry the session cookie, a CSRF field derived from the token, and, when the
browser sends one, an `Origin`/`Referer` of this very site. Without a token configured
every write answers 403.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from flask import Request

COOKIE = "cutoutd_session"
CSRF_FIELD = "csrf"


class Guard:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def _mac(self, purpose: str) -> str:
        assert self._token is not None
        return hmac.new(self._token, purpose.encode(), hashlib.sha256).hexdigest()

    def session_value(self) -> str:
        return self._mac("session")

    def csrf_value(self) -> str:
        return self._mac("csrf")

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    def signed_in(self, request: Request) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        return self.enabled and hmac.compare_digest(cookie, self.session_value())

    def refuse_write(self, request: Request, *, signing_in: bool = False) -> str | None:
        """Why this POST must be refused, or None when it may go on."""
        if not self.enabled:
            return "this page is read-only: no [http] token_credential is configured"
        if not same_origin(request):
            return "cross-site request refused"
        if signing_in:
            return None
        if not self.signed_in(request):
            return "sign in with the token first"
        if not hmac.compare_digest(request.form.get(CSRF_FIELD, ""), self.csrf_value()):
            return "missing or wrong CSRF field"
        return None


def same_origin(request: Request) -> bool:
    """An `Origin` (or, without one, a `Referer`) naming another site is refused; a
    request with neither (curl, an old browser) relies on the cookie and CSRF field."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc.lower() == request.host.lower()
