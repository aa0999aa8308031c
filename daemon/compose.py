"""Building the parts from settings: the ledger URL, storage, engine and metrics, and the
interactive Dropbox authorization. Used by `service` (the composition root) and by `cli`
for the commands that need one part without a running service."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import Settings
from daemon.engines.base import Engine
from daemon.errors import AuthError, CutoutdError
from daemon.inplace_retry import PatientStorage, RateLimitWaiter
from daemon.ledger import default_ledger_url, default_state_directory
from daemon.ledger.queries import LedgerReader
from daemon.notify import Notifier
from daemon.secrets import read_secret
from daemon.spool import ResultSpool
from daemon.storage.base import Storage

if TYPE_CHECKING:
    from daemon.metrics import Metrics


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


def build_engine(settings: Settings, stop: threading.Event, kind: str | None = None) -> Engine:
    """The engine of `kind` (default: `[engine] kind`)."""
    if (kind or settings.engine.kind) == "photoshop":
        from daemon.engines.photoshop import PhotoshopEngine

        return PhotoshopEngine.from_environment(settings.photoshop, stop)
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


def build_other_engines(settings: Settings, stop: threading.Event) -> dict[str, Engine]:
    """The engines that `[[profile]]` tables choose besides `[engine] kind`'s."""
    return {kind: build_engine(settings, stop, kind) for kind in settings.engine_kinds[1:]}


def worker_count(settings: Settings) -> int:
    """Local engine: one thread per model run. Photoshop: threads mostly wait on polls."""
    if "photoshop" in settings.engine_kinds:
        return settings.photoshop.max_in_flight
    return settings.engine.workers


def build_metrics(settings: Settings, engine: Engine) -> Metrics | None:
    if not settings.metrics.enabled:
        return None
    from daemon.metrics import Metrics, engine_hardware_reader, engine_rate_limit_reader

    return Metrics(engine.name, engine_rate_limit_reader(engine), engine_hardware_reader(engine))


def discovery_interval(settings: Settings, notifier: Notifier) -> float:
    """The poll interval, shortened when needed so that discovery passes (which ping the
    systemd watchdog) come at least twice per WatchdogSec."""
    interval = settings.source.poll_interval
    if notifier.watchdog_seconds:
        interval = min(interval, notifier.watchdog_seconds / 2)
    return interval


def open_ledger_reader(settings: Settings) -> LedgerReader:
    """A read-only view for the audit commands; never takes SQLite's write lock."""
    url = ledger_url(settings)
    if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
        raise CutoutdError(
            f"no ledger at {url.removeprefix('sqlite:///')}: run `cutoutd run` first, or check [ledger] url"
        )
    return LedgerReader(url, writer=False)


def authorize_dropbox_interactively(read_code: Callable[[str], str]) -> dict[str, str]:
    from daemon.storage.dropbox import authorize_dropbox

    app_key = read_secret("DROPBOX_APP_KEY")
    if not app_key:
        raise AuthError("set DROPBOX_APP_KEY (your Dropbox app's key) first")
    return authorize_dropbox(app_key, read_secret("DROPBOX_APP_SECRET"), read_code)
