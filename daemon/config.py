"""TOML -> frozen settings. Every problem is reported at once as `dotted.key: what is wrong`.

Secrets never live here: they come from the environment or systemd credentials.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from daemon.config_notify import NotifySettings, read_notify
from daemon.config_profiles import read_profiles
from daemon.config_reader import (
    TableReader,
    at_least_one,
    hex_color,
    http_url,
    non_negative,
    positive,
    read_table,
)
from daemon.errors import ConfigError
from daemon.models import CutoutOptions, Mode, OutputFormat, OutputSpec, Profile, Rgb

DEFAULT_ROOT = "RemoveBGProcess"
DEFAULT_DROPBOX_ROOT = "/RemoveBGProcess"


@dataclass(frozen=True, slots=True)
class SourceSettings:
    kind: str = "local"
    root: str = DEFAULT_ROOT
    poll_interval: float = 30.0
    recursive: bool = False
    dedupe: str = "content"
    settle_seconds: float = 2.0
    longpoll: bool = True


@dataclass(frozen=True, slots=True)
class EngineSettings:
    kind: str = "local"
    options: CutoutOptions = field(default_factory=CutoutOptions)
    workers: int = 2
    model: str = "u2netp"
    max_pixels: int = 50_000_000
    model_runs: int = 0  # 0: automatic, min(workers, cores, 2)
    idle_release: float = 10.0  # 0: keep the model's working memory while idle
    device: str = "auto"  # "auto": CUDA when onnxruntime-gpu can use it, else the CPU


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    url: str = ""
    node_id: str = ""
    lease_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    policy: str = "move"


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = 5
    backoff_initial: float = 10.0
    backoff_multiplier: float = 3.0
    backoff_max: float = 3600.0
    rate_limit_wait: float = 60.0  # seconds an image waits in place on Dropbox rate limits

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait before attempt number `attempts + 1`."""
        delay = self.backoff_initial * self.backoff_multiplier ** max(attempts - 1, 0)
        return float(min(delay, self.backoff_max))


@dataclass(frozen=True, slots=True)
class LogSettings:
    # "auto": short human lines and a progress bar on a terminal; JSON lines under systemd
    # ($JOURNAL_STREAM) or when stderr is not a terminal. "json" or "text" force one.
    format: str = "auto"
    level: str = "INFO"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    drain_timeout: float = 20.0


@dataclass(frozen=True, slots=True)
class DropboxSettings:
    timeout: float = 100.0
    max_retries_on_error: int = 4
    max_retries_on_rate_limit: int = 0
    longpoll_timeout: int = 30
    path_root: str = "root"  # "root": the account's root namespace (team space); "home"


@dataclass(frozen=True, slots=True)
class PhotoshopSettings:
    api_url: str = "https://image.adobe.io"
    ims_url: str = "https://ims-na1.adobelogin.com/ims/token/v3"
    scopes: tuple[str, ...] = ("openid", "AdobeID", "read_organizations")
    submit_limit: int = 2
    submit_period: float = 3.0
    max_in_flight: int = 20
    poll_initial: float = 2.0
    poll_multiplier: float = 1.5
    poll_max: float = 30.0
    job_timeout: float = 600.0
    request_timeout: float = 60.0
    color_decontamination: float = 1.0


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    directory: str = ""  # empty: `spool/` beside a SQLite ledger, else in the state directory
    max_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The status page, /metrics and /healthz on one server (see daemon.web)."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 9464
    # The name of a credential (environment variable or systemd credential) holding the
    # token that unlocks the Retry/Reprocess buttons; empty: the page is read-only.
    token_credential: str = ""
    # Trust X-Forwarded-For/-Proto from one reverse proxy in front (docs/web.md).
    behind_proxy: bool = False
    # Before/after thumbnails kept in the state directory (oldest removed beyond this).
    thumbnails: int = 2000


@dataclass(frozen=True, slots=True)
class Settings:
    source: SourceSettings = field(default_factory=SourceSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    log: LogSettings = field(default_factory=LogSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    dropbox: DropboxSettings = field(default_factory=DropboxSettings)
    photoshop: PhotoshopSettings = field(default_factory=PhotoshopSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    notify: tuple[NotifySettings, ...] = ()
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    profiles: tuple[Profile, ...] = ()
    config_path: str | None = None
    # Messages about deprecated keys, logged once at start-up (logging is not set up yet
    # while the file is read).
    deprecations: tuple[str, ...] = ()

    @property
    def default_profile(self) -> Profile:
        """For inputs no `[[profile]]` matches: one output from the `[engine]` keys, in
        output/ itself, exactly as before profiles existed."""
        return Profile("default", (), (OutputSpec.from_options(self.engine.options),))

    @property
    def engine_kinds(self) -> tuple[str, ...]:
        """Every engine some input may use: `[engine] kind` first, then the profiles'."""
        kinds = [self.engine.kind]
        kinds += [p.engine for p in self.profiles if p.engine and p.engine not in kinds]
        return tuple(kinds)


def _read_source(data: Mapping[str, Any], problems: list[str]) -> SourceSettings:
    r = TableReader(data, "source", problems)
    kind = r.choice("kind", "local", ("local", "dropbox"))
    default_root = DEFAULT_DROPBOX_ROOT if kind == "dropbox" else DEFAULT_ROOT
    root = r.get("root", default_root, str, lambda v: None if v.strip() else "must not be empty")
    if kind == "dropbox" and not root.startswith("/"):
        r.problem("root", f"a Dropbox root must start with '/', got {root!r}")
    settings = SourceSettings(
        kind=kind,
        root=root,
        poll_interval=r.get("poll_interval", 30.0, float, positive),
        recursive=r.get("recursive", False, bool),
        dedupe=r.choice("dedupe", "content", ("content", "off")),
        settle_seconds=r.get("settle_seconds", 2.0, float, non_negative),
        longpoll=r.get("longpoll", True, bool),
    )
    r.finish()
    return settings


def _read_engine(data: Mapping[str, Any], problems: list[str]) -> EngineSettings:
    r = TableReader(data, "engine", problems)
    color = r.get("background_color", None, str, hex_color)
    options = CutoutOptions(
        mode=Mode(r.choice("mode", "cutout", tuple(m.value for m in Mode))),
        output_format=OutputFormat(
            r.choice("output_format", "png", tuple(f.value for f in OutputFormat))
        ),
        trim=r.get("trim", False, bool),
        background_color=Rgb.parse(color) if color else None,
    )
    settings = EngineSettings(
        kind=r.choice("kind", "local", ("local", "photoshop")),
        options=options,
        workers=r.get("workers", 2, int, at_least_one),
        model=r.choice("model", "u2netp", ("u2netp", "u2net")),
        max_pixels=r.get("max_pixels", 50_000_000, int, at_least_one),
        model_runs=r.get("model_runs", 0, int, non_negative),
        idle_release=r.get("idle_release", 10.0, float, non_negative),
        device=r.choice("device", "auto", ("auto", "cpu", "cuda")),
    )
    r.finish()
    return settings


def _read_ledger(data: Mapping[str, Any], problems: list[str]) -> LedgerSettings:
    def check_url(value: Any) -> str | None:
        ok = value == "" or value.startswith(("sqlite:", "postgresql:", "postgresql+"))
        if not ok:
            return f"must be a SQLAlchemy URL (sqlite:///... or postgresql+psycopg://...), got {value!r}"
        if (
            "@" in value.split("//", 1)[-1].split("/", 1)[0]
            and ":" in value.split("//", 1)[-1].split("@", 1)[0]
        ):
            return "must not contain a password; use PGPASSWORD, ~/.pgpass or a systemd credential"
        return None

    return read_table(
        data,
        "ledger",
        LedgerSettings,
        problems,
        checks={"url": check_url, "lease_seconds": positive},
    )


def parse_settings(data: Mapping[str, Any], config_path: str | None = None) -> Settings:
    """Validate a parsed TOML document completely; raise ConfigError listing every problem."""
    problems: list[str] = []
    known = set(Settings.__dataclass_fields__) - {"config_path", "deprecations", "profiles"}
    known |= {"metrics", "profile"}
    http, deprecations = _read_http(data, problems)
    for section in sorted(set(data) - known):
        problems.append(f"{section}: unknown section")
    settings = Settings(
        source=_read_source(data, problems),
        engine=_read_engine(data, problems),
        ledger=_read_ledger(data, problems),
        archive=read_table(
            data,
            "archive",
            ArchiveSettings,
            problems,
            choices={"policy": ("move", "delete", "keep")},
        ),
        retry=read_table(
            data,
            "retry",
            RetrySettings,
            problems,
            checks={
                "max_attempts": at_least_one,
                "backoff_initial": non_negative,
                "backoff_multiplier": at_least_one,
                "backoff_max": non_negative,
                "rate_limit_wait": non_negative,
            },
        ),
        log=read_table(
            data,
            "log",
            LogSettings,
            problems,
            choices={
                "format": ("auto", "json", "text"),
                "level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            },
        ),
        service=read_table(
            data, "service", ServiceSettings, problems, checks={"drain_timeout": positive}
        ),
        dropbox=read_table(
            data,
            "dropbox",
            DropboxSettings,
            problems,
            choices={"path_root": ("root", "home")},
            checks={
                "timeout": positive,
                "max_retries_on_error": non_negative,
                "max_retries_on_rate_limit": non_negative,
                "longpoll_timeout": lambda v: (
                    None if 30 <= v <= 480 else f"must be between 30 and 480, got {v!r}"
                ),
            },
        ),
        photoshop=read_table(
            data,
            "photoshop",
            PhotoshopSettings,
            problems,
            checks={
                "api_url": http_url,
                "ims_url": http_url,
                "submit_limit": at_least_one,
                "submit_period": positive,
                "max_in_flight": at_least_one,
                "poll_initial": positive,
                "poll_multiplier": at_least_one,
                "poll_max": positive,
                "job_timeout": positive,
                "request_timeout": positive,
                "color_decontamination": lambda v: (
                    None if 0 <= v <= 1 else f"must be between 0 and 1, got {v!r}"
                ),
            },
        ),
        http=http,
        notify=read_notify(data, problems),
        spool=read_table(
            data, "spool", SpoolSettings, problems, checks={"max_bytes": at_least_one}
        ),
        config_path=config_path,
        deprecations=deprecations,
    )
    settings = replace(settings, profiles=read_profiles(data, settings.source.recursive, problems))
    _cross_check(settings, problems)
    if problems:
        raise ConfigError(problems)
    return settings


def _tcp_port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a TCP port, got {value!r}"


def _read_http(
    data: Mapping[str, Any], problems: list[str]
) -> tuple[HttpSettings, tuple[str, ...]]:
    """`[http]`; the old `[metrics]` keys (enabled, address, port) still count, with one
    deprecation message, where `[http]` does not set them."""
    checks = {"port": _tcp_port, "thumbnails": non_negative}
    old = data.get("metrics")
    if old is None:
        return read_table(data, "http", HttpSettings, problems, checks=checks), ()
    metrics = TableReader(data, "metrics", problems)
    legacy = {
        "enabled": metrics.get("enabled", None, bool),
        "address": metrics.get("address", None, str),
        "port": metrics.get("port", None, int, _tcp_port),
    }
    metrics.finish()
    http = dict(data.get("http", {})) if isinstance(data.get("http", {}), Mapping) else {}
    merged = {key: value for key, value in legacy.items() if value is not None} | http
    settings = read_table({"http": merged}, "http", HttpSettings, problems, checks=checks)
    message = (
        "[metrics] is deprecated: the status page, /metrics and /healthz are served by "
        "[http] (enabled by default); rename the section to [http]"
    )
    return settings, (message,)


def _cross_check(settings: Settings, problems: list[str]) -> None:
    needs_dropbox = (
        'the Photoshop engine needs source.kind = "dropbox": Adobe must fetch each input '
        "by URL, which a local folder cannot provide"
    )
    if settings.source.kind == "local":
        if settings.engine.kind == "photoshop":
            problems.append(f"engine.kind: {needs_dropbox}")
        for profile in settings.profiles:
            if profile.engine == "photoshop":
                problems.append(f"profile.{profile.name}.engine: {needs_dropbox}")


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Read and validate a config file; without one, the documented defaults."""
    if path is None:
        return parse_settings({})
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"--config: file not found: {file}"]) from None
    except OSError as exc:
        raise ConfigError([f"--config: cannot read {file}: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"--config: not valid TOML: {exc}"]) from None
    return parse_settings(data, str(file))
