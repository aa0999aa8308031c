"""The status page as a Flask application: overview, recent results, failures, one image,
and the Retry/Reprocess actions. Served by `daemon.web.server` (waitress) together with
`/metrics` and `/healthz`.

Every read goes through `Dashboard` (daemon.ledger.dashboard); every write through the
same requeue operations as the CLI (`Actions`, daemon.web.actions). Nothing here reads
storage: thumbnails come from the state directory (daemon.web.thumbnails).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_file
from werkzeug.middleware.proxy_fix import ProxyFix

from daemon.ledger.audit import AuditArgumentError, ItemFilter
from daemon.ledger.dashboard import Dashboard
from daemon.logs import context
from daemon.models import Item, ItemStatus
from daemon.secrets import redact
from daemon.web.security import COOKIE, CSRF_FIELD, Guard
from daemon.web.thumbnails import SIDES, Thumbnails
from daemon.web.views import overview_record, parse_day, when

log = logging.getLogger(__name__)
PER_PAGE = 24
FAILURES_PER_PAGE = 50
LATEST_FAILURES = 5  # on the overview
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the running daemon knows that the ledger does not."""

    engine: str
    storage: str
    health: Callable[[], str | None]  # None when healthy, else the reason
    last_poll: Callable[[], float | None]  # unix time of the last successful poll
    metrics: Callable[[], tuple[bytes, str]] | None = None  # (exposition, content type)
    role: Callable[[], str] = lambda: "lister"  # `lister` or `worker` (see daemon.watcher)
    node: str = ""  # this node's name in the ledger


class Actions(Protocol):
    def retry(self, item_id: int, actor: str) -> str: ...

    def reprocess(self, item_id: int, actor: str) -> str: ...


class ActionRefused(Exception):
    """The revision is not in a state this action takes, or its input cannot come back."""


def create_app(
    dashboard: Dashboard,
    live: LiveState,
    *,
    guard: Guard,
    actions: Actions | None = None,
    thumbnails: Thumbnails | None = None,
    behind_proxy: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024, TEMPLATES_AUTO_RELOAD=False)
    if behind_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    app.jinja_env.filters["when"] = when
    app.jinja_env.filters["redact"] = redact

    def thumb(item_id: int, side: str) -> str | None:
        found = thumbnails.path(item_id, side) if thumbnails is not None else None
        return f"/thumbs/{item_id}-{side}.webp?v={int(found.stat().st_mtime)}" if found else None

    app.jinja_env.globals["thumb"] = thumb
    pages = Pages(dashboard, live, guard, actions, thumbnails, now)
    pages.register(app)

    @app.after_request
    def headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app


class Pages:
    """The routes; each reads what it shows and renders one template."""

    def __init__(
        self,
        dashboard: Dashboard,
        live: LiveState,
        guard: Guard,
        actions: Actions | None,
        thumbnails: Thumbnails | None,
        now: Callable[[], datetime],
    ) -> None:
        self.dashboard = dashboard
        self.live = live
        self.guard = guard
        self.actions = actions
        self.thumbnails = thumbnails
        self.now = now

    def register(self, app: Flask) -> None:
        get, post = ["GET"], ["POST"]
        app.add_url_rule("/", "index", self.index, methods=get)
        app.add_url_rule("/results", "results", self.results, methods=get)
        app.add_url_rule(
            "/fragments/results", "results_fragment", self.results_fragment, methods=get
        )
        app.add_url_rule(
            "/fragments/failures", "failures_fragment", self.failures_fragment, methods=get
        )
        app.add_url_rule("/failures", "failures", self.failures, methods=get)
        app.add_url_rule("/items/<int:item_id>", "item", self.item, methods=get)
        app.add_url_rule("/thumbs/<int:item_id>-<side>.webp", "thumb", self.thumb, methods=get)
        app.add_url_rule("/api/overview", "api_overview", self.api_overview, methods=get)
        app.add_url_rule("/healthz", "healthz", self.healthz, methods=get)
        app.add_url_rule("/metrics", "metrics", self.metrics, methods=get)
        app.add_url_rule("/login", "login", self.login, methods=post)
        app.add_url_rule("/logout", "logout", self.logout, methods=post)
        app.add_url_rule("/items/<int:item_id>/retry", "retry", self.retry, methods=post)
        app.add_url_rule(
            "/items/<int:item_id>/reprocess", "reprocess", self.reprocess, methods=post
        )

    # -- reads ----------------------------------------------------------------------------

    def _render(self, template: str, **values: Any) -> str:
        signed_in = self.guard.signed_in(request)
        return render_template(
            template,
            live=self.live,
            health=self.live.health(),
            actions=self.guard.enabled and self.actions is not None,
            signed_in=signed_in,
            csrf_field=CSRF_FIELD,
            csrf=self.guard.csrf_value() if signed_in else "",
            **values,
        )

    def _overview(self) -> dict[str, Any]:
        now = self.now()
        local_midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        overview = self.dashboard.overview(now, local_midnight.astimezone(UTC))
        return overview_record(
            overview,
            health=self.live.health(),
            last_poll=self.live.last_poll(),
            engine=self.live.engine,
        )

    def _latest_failures(self) -> list[Item]:
        return self.dashboard.page(ItemFilter((ItemStatus.FAILED,)), 1, LATEST_FAILURES).items

    def index(self) -> str:
        page = self.dashboard.page(ItemFilter((ItemStatus.SUCCEEDED,)), 1, PER_PAGE)
        return self._render(
            "index.html", overview=self._overview(), page=page, failures=self._latest_failures()
        )

    def failures_fragment(self) -> str:
        """The overview's latest failures, for its live updates."""
        return self._render("_failures.html", failures=self._latest_failures())

    def _results_page(self) -> Any:
        number = request.args.get("page", 1, type=int) or 1
        return self.dashboard.page(ItemFilter((ItemStatus.SUCCEEDED,)), number, PER_PAGE)

    def results(self) -> str:
        return self._render("results.html", page=self._results_page())

    def results_fragment(self) -> str:
        return self._render("_grid.html", page=self._results_page())

    def failures(self) -> str:
        args = request.args
        status = args.get("status", "failed")
        statuses = tuple(ItemStatus) if status == "any" else ()
        if status in {s.value for s in ItemStatus}:
            statuses = (ItemStatus(status),)
        try:
            since, until = parse_day(args.get("since")), parse_day(args.get("until"), end=True)
        except ValueError as exc:
            abort(400, str(exc))
        flt = ItemFilter(statuses, args.get("path") or None, since, until)
        page = self.dashboard.page(flt, args.get("page", 1, type=int) or 1, FAILURES_PER_PAGE)
        return self._render("failures.html", page=page, args=args, statuses=list(ItemStatus))

    def item(self, item_id: int) -> str:
        found = self.dashboard.reader.get(item_id)
        if found is None:
            abort(404, f"no revision #{item_id} in the ledger")
        histories = self.dashboard.show(found.path)
        return self._render("item.html", item=found, histories=histories)

    def thumb(self, item_id: int, side: str) -> Response:
        file = self.thumbnails.path(item_id, side) if self.thumbnails and side in SIDES else None
        if file is None:
            abort(404)
        response = send_file(file, mimetype="image/webp", max_age=60)
        return response

    def api_overview(self) -> Response:
        response = jsonify(self._overview())
        response.headers["Cache-Control"] = "no-store"
        return response

    def healthz(self) -> Response | tuple[str, int, dict[str, str]]:
        """`ok` (200) or the reason (503), as plain text; as JSON with the node's name and
        role (`lister` or `worker`) when asked for it (`Accept: application/json`)."""
        reason = self.live.health()
        status = 200 if reason is None else 503
        if request.accept_mimetypes.best == "application/json":
            body = {"status": "ok" if reason is None else "unhealthy", "reason": reason,
                    "node": self.live.node, "role": self.live.role()}  # fmt: skip
            response = jsonify(body)
            response.status_code = status
            response.headers["Cache-Control"] = "no-store"
            return response
        plain = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        return ("ok\n" if reason is None else f"{reason}\n", status, plain)

    def metrics(self) -> Response:
        if self.live.metrics is None:
            abort(404)
        body, content_type = self.live.metrics()
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

    # -- writes ---------------------------------------------------------------------------

    def _refused(self, reason: str) -> tuple[str, int]:
        log.warning(
            "refused %s %s from %s: %s",
            request.method,
            request.path,
            request.remote_addr,
            reason,
            extra=context("web.refused", path=request.path, reason=reason),
        )
        return self._render("message.html", title="Refused", message=reason), 403

    def login(self) -> Any:
        refusal = self.guard.refuse_write(request, signing_in=True)
        if refusal is None and not self.guard.token_matches(request.form.get("token", "")):
            refusal = "wrong token"
        if refusal is not None:
            return self._refused(refusal)
        response = redirect(_back(), code=303)
        response.set_cookie(
            COOKIE,
            self.guard.session_value(),
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path="/",
        )
        return response

    def logout(self) -> Any:
        refusal = self.guard.refuse_write(request, signing_in=True)
        if refusal is not None:
            return self._refused(refusal)
        response = redirect(_back(), code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
        return response

    def _act(self, item_id: int, name: str) -> Any:
        refusal = self.guard.refuse_write(request)
        if refusal is not None or self.actions is None:
            return self._refused(refusal or "actions are off")
        actor = f"web:{request.remote_addr}"
        action: Callable[[int, str], str] = getattr(self.actions, name)
        try:
            message = action(item_id, actor)
        except (ActionRefused, AuditArgumentError) as exc:
            return self._render("message.html", title="Not done", message=str(exc)), 409
        log.info(
            "%s #%d by %s: %s",
            name,
            item_id,
            actor,
            message,
            extra=context(f"web.{name}", item_id=item_id, actor=actor),
        )
        return redirect(f"/items/{item_id}", code=303)

    def retry(self, item_id: int) -> Any:
        return self._act(item_id, "retry")

    def reprocess(self, item_id: int) -> Any:
        return self._act(item_id, "reprocess")


def _back() -> str:
    """Where to go after signing in or out: the page the form was on (same site only)."""
    target = request.form.get("next", "/")
    return target if target.startswith("/") and not target.startswith("//") else "/"
