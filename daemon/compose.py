"""Building the parts from settings: the ledger URL, storage, engine and metrics, and the
interactive Dropbox authorization. Used by `service` (the composition root) and by `cli`
for the commands that need one part without a running service."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import Settings
from daemon.engines.base import Engine
from daemon.errors import AuthError, ConfigError, CutoutdError
from daemon.inplace_retry import PatientStorage, RateLimitWaiter
from daemon.ledger import Ledger, default_ledger_url, default_state_directory
from daemon.ledger.queries import LedgerReader
from daemon.notify import Notifier
from daemon.secrets import read_secret
from daemon.spool import ResultSpool
from daemon.storage.base import Storage

if TYPE_CHECKING:
    from daemon.alerts.messages import Digest
    from daemon.alerts.runner import Alerts
    from daemon.alerts.watch import Trouble
    from daemon.engines.ratelimit import Clock as RateClock
    from daemon.engines.ratelimit import Limiter
    from daemon.metrics import Metrics
    from daemon.web.app import LiveState
    from daemon.web.server import WebServer
    from daemon.web.thumbnails import Thumbnails


def ledger_url(settings: Settings) -> str:
    return settings.ledger.url or default_ledger_url(settings.source.kind, settings.source.root)


def patient_storage(storage: Storage, settings: Settings, stop: threading.Event) -> Storage:
    """`storage` whose per-image calls wait out rate limits in place (daemon.inplace_retry)."""
    return PatientStorage(storage, RateLimitWaiter(settings.retry.rate_limit_wait, stop))


def build_storage(settings: Settings) -> Storage:
    source = settings.source
    if source.kind == "dropbox":
        from daemon.storage.dropbox import DropboxCredentials, DropboxStorage

        return DropboxStorage(
            source.root, source.recursive, settings.dropbox, DropboxCredentials.from_environment()
        )
    from daemon.storage.local import LocalStorage

    return LocalStorage(
        source.root, recursive=source.recursive, settle_seconds=source.settle_seconds
    )


def build_spool(settings: Settings) -> ResultSpool:
    """The result spool: `[spool] directory`, else `spool/` beside a SQLite ledger, else
    in the state directory; one sub-folder per ledger, so two daemons never share rows."""
    url = ledger_url(settings)
    directory = settings.spool.directory
    if directory:
        base = Path(directory).expanduser()
    elif url.startswith("sqlite:///"):
        base = Path(url.removeprefix("sqlite:///")).parent / "spool"
    else:
        base = default_state_directory(settings.source.kind, settings.source.root) / "spool"
    ledger_digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return ResultSpool(base / ledger_digest, settings.spool.max_bytes)


def build_engine(
    settings: Settings,
    stop: threading.Event,
    kind: str | None = None,
    ledger: Ledger | None = None,
) -> Engine:
    """The engine of `kind` (default: `[engine] kind`). On a PostgreSQL `ledger`, the
    Photoshop engine paces its submissions with the slots every node shares."""
    if (kind or settings.engine.kind) == "photoshop":
        from daemon.engines.photoshop import PhotoshopEngine

        return PhotoshopEngine.from_environment(
            settings.photoshop, stop, limiter=shared_submit_limiter(settings, ledger)
        )
    from daemon.engines.local import LocalEngine

    engine = settings.engine
    return LocalEngine(
        workers=engine.workers,
        model=engine.model,
        max_pixels=engine.max_pixels,
        model_runs=engine.model_runs or None,
        idle_release=engine.idle_release or None,
        device=engine.device,
    )


def describe_engine(engine: Engine) -> str:
    """What runs the model, for `cutoutd check`: the local engine's runtime, device,
    precision and threads; empty for an engine that does not say."""
    describe = getattr(engine, "describe", None)
    return str(describe()) if callable(describe) else ""


def shared_submit_limiter(
    settings: Settings, ledger: Ledger | None
) -> Callable[[RateClock], Limiter] | None:
    """Adobe's limit shared through a PostgreSQL ledger; None (each process its own
    in-memory limiter) on SQLite, as a SQLite ledger has one node."""
    if ledger is None or not ledger.shared:
        return None
    from daemon.engines.shared_limit import SharedSubmitLimiter
    from daemon.ledger.slots import SubmitSlots

    photoshop = settings.photoshop
    slots = SubmitSlots(
        ledger,
        "photoshop",
        photoshop.submit_limit,
        photoshop.submit_period,
        photoshop.request_timeout,
    )
    return lambda clock: SharedSubmitLimiter(slots, clock)


def build_other_engines(
    settings: Settings, stop: threading.Event, ledger: Ledger | None = None
) -> dict[str, Engine]:
    """The engines that `[[profile]]` tables choose besides `[engine] kind`'s."""
    return {kind: build_engine(settings, stop, kind, ledger) for kind in settings.engine_kinds[1:]}


def worker_count(settings: Settings) -> int:
    """Local engine: one thread per model run. Photoshop: threads mostly wait on polls."""
    if "photoshop" in settings.engine_kinds:
        return settings.photoshop.max_in_flight
    return settings.engine.workers


def build_metrics(settings: Settings, engine: Engine) -> Metrics | None:
    if not settings.http.enabled:
        return None
    from daemon.metrics import Metrics, engine_hardware_reader, engine_rate_limit_reader

    return Metrics(engine.name, engine_rate_limit_reader(engine), engine_hardware_reader(engine))


def build_thumbnails(settings: Settings) -> Thumbnails | None:
    """Before/after thumbnails in the state directory, when the status page is on."""
    if not settings.http.enabled or settings.http.thumbnails <= 0:
        return None
    from daemon.web.thumbnails import Thumbnails

    folder = default_state_directory(settings.source.kind, settings.source.root) / "thumbnails"
    return Thumbnails(folder, settings.http.thumbnails)


def http_token(settings: Settings) -> str | None:
    """The token that unlocks the page's actions, from the credential `[http]
    token_credential` names; None when it names none."""
    name = settings.http.token_credential
    if not name:
        return None
    token = read_secret(name)
    if not token:
        raise ConfigError(
            [
                f"http.token_credential: no credential {name!r} in the environment or "
                "$CREDENTIALS_DIRECTORY"
            ]
        )
    return token


def build_web_server(
    settings: Settings,
    live: LiveState,
    ledger: Ledger,
    storage: Storage,
    wake: Callable[[], None],
    thumbnails: Thumbnails | None,
) -> WebServer:
    """The status page, /metrics and /healthz on `[http] address:port`; reads through a
    reader of its own (SQLite: never takes the write lock)."""
    from daemon.ledger.dashboard import Dashboard
    from daemon.web.actions import RequeueActions
    from daemon.web.app import create_app
    from daemon.web.security import Guard
    from daemon.web.server import WebServer

    token = http_token(settings)
    dashboard = Dashboard(LedgerReader(ledger.url, writer=False))
    app = create_app(
        dashboard,
        live,
        guard=Guard(token),
        actions=RequeueActions(ledger, storage, wake) if token else None,
        thumbnails=thumbnails,
        behind_proxy=settings.http.behind_proxy,
    )
    return WebServer(app, settings.http.address, settings.http.port, closing=[dashboard.close])


def _required_secret(name: str, key: str) -> str:
    value = read_secret(name)
    if not value:
        raise ConfigError(
            [f"{key}: no credential {name!r} in the environment or $CREDENTIALS_DIRECTORY"]
        )
    return value


def build_alerts(
    settings: Settings,
    ledger: Ledger,
    engine: str,
    trouble: Trouble,
    polled: Callable[[], bool] = lambda: True,
) -> Alerts | None:
    """One watcher per `[[notify]]` target, one dispatcher recording into the ledger.
    `polled`: whether storage answered this process yet (a `degraded` left open by the
    last stop is over only then)."""
    if not settings.notify:
        return None
    from datetime import UTC, datetime

    from daemon.alerts.dispatch import Dispatcher
    from daemon.alerts.runner import Alerts
    from daemon.alerts.senders import EmailSender, Sender, WebhookSender
    from daemon.alerts.watch import AlertWatcher

    def record(
        target: str, event: str, sent: bool, attempts: int, title: str, error: str | None
    ) -> None:
        ledger.record_notification(
            target, event, sent=sent, attempts=attempts, title=title, error=error
        )

    dispatcher = Dispatcher(record)
    watchers = []
    for number, target in enumerate(settings.notify, 1):
        sender: Sender
        if target.kind == "webhook":
            url = _required_secret(target.url_credential, f"notify[{number}].url_credential")
            sender = WebhookSender(url, target.timeout)
        else:
            password = None
            if target.password_credential:
                key = f"notify[{number}].password_credential"
                password = _required_secret(target.password_credential, key)
            sender = EmailSender(target, password)
        watchers.append(
            AlertWatcher(
                target,
                sender,
                dispatcher,
                now=lambda: datetime.now(UTC),
                trouble=trouble,
                digest=lambda since, until: read_digest(ledger, since, until),
                engine=engine,
                open_degradation=ledger.open_degradation,
                polled=polled,
            )
        )
    return Alerts(watchers, dispatcher)


def read_digest(ledger: LedgerReader, since: datetime, until: datetime) -> Digest:
    """A day's figures for the digest, from the audit's own statistics."""
    from daemon.alerts.messages import Digest
    from daemon.ledger.audit import LedgerAudit
    from daemon.models import ItemStatus

    stats = LedgerAudit(ledger).stats(since, until)
    return Digest(
        succeeded=stats.counts[ItemStatus.SUCCEEDED],
        failed=stats.counts[ItemStatus.FAILED],
        skipped=stats.counts[ItemStatus.SKIPPED],
        submissions=sum(stats.submissions.values()),
        failures=stats.failures,
    )


def discovery_interval(settings: Settings, notifier: Notifier) -> float:
    """The poll interval, shortened when needed so that discovery passes (which ping the
    systemd watchdog) come at least twice per WatchdogSec."""
    interval = settings.source.poll_interval
    if notifier.watchdog_seconds:
        interval = min(interval, notifier.watchdog_seconds / 2)
    return interval


def open_ledger_reader(settings: Settings) -> LedgerReader:
    """A read-only view for the audit commands; never takes SQLite's write lock."""
    return LedgerReader(_existing_ledger_url(settings), writer=False)


def _existing_ledger_url(settings: Settings) -> str:
    url = ledger_url(settings)
    if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
        raise CutoutdError(
            f"no ledger at {url.removeprefix('sqlite:///')}: run `cutoutd run` first, or check [ledger] url"
        )
    return url


def open_ledger(settings: Settings, *, create: bool = True) -> Ledger:
    """The ledger as `[ledger]` configures it: this node's name, its lease, its pool
    (`pool_size`, else the workers + 4: heartbeat, watcher, status page), and one claim
    per content hash at a time while `[source] dedupe = "content"`. `create=False`: an
    absent SQLite file is an error rather than a new ledger."""
    url = ledger_url(settings) if create else _existing_ledger_url(settings)
    return Ledger(
        url,
        node_id=settings.ledger.node_id or None,
        lease_seconds=settings.ledger.lease_seconds,
        dedupe=settings.source.dedupe == "content",
        pool_size=settings.ledger.pool_size or worker_count(settings) + 4,
    )


def authorize_dropbox_interactively(read_code: Callable[[str], str]) -> dict[str, str]:
    from daemon.storage.dropbox import authorize_dropbox

    app_key = read_secret("DROPBOX_APP_KEY")
    if not app_key:
        raise AuthError("set DROPBOX_APP_KEY (your Dropbox app's key) first")
    return authorize_dropbox(app_key, read_secret("DROPBOX_APP_SECRET"), read_code)
