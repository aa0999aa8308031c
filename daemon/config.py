"""TOML -> frozen settings. Every problem is reported at once as `dotted.key: what is wrong`.

Secrets never live here: they come from the environment or systemd credentials.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from daemon.errors import ConfigError
from daemon.models import CutoutOptions, Mode, OutputFormat, Rgb

DEFAULT_ROOT = "RemoveBGProcess"
DEFAULT_DROPBOX_ROOT = "/RemoveBGProcess"
SECRET_KEYS = frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "app_secret",
        "client_secret",
        "secret",
        "password",
        "api_key",
        "key",
    }
)


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

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait before attempt number `attempts + 1`."""
        delay = self.backoff_initial * self.backoff_multiplier ** max(attempts - 1, 0)
        return float(min(delay, self.backoff_max))


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = "json"
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
class MetricsSettings:
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 9464


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
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    config_path: str | None = None


T = TypeVar("T")


class _Reader:
    """Reads one table, collecting problems instead of stopping at the first."""

    def __init__(self, data: Mapping[str, Any], section: str, problems: list[str]) -> None:
        raw = data.get(section, {})
        if not isinstance(raw, Mapping):
            problems.append(f"{section}: must be a table")
            raw = {}
        self.raw = dict(raw)
        self.section = section
        self.problems = problems
        self.seen: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.section}.{key}: {message}")

    def get(
        self,
        key: str,
        default: T,
        kind: type | tuple[type, ...],
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        self.seen.add(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            self.problem(key, f"must be {_kind_name(kind)}, not a boolean")
            return default
        if not isinstance(value, kind):
            self.problem(key, f"must be {_kind_name(kind)}, got {type(value).__name__} {value!r}")
            return default
        message = check(value) if check else None
        if message:
            self.problem(key, message)
            return default
        return value  # type: ignore[return-value]

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        def check(value: Any) -> str | None:
            return (
                None
                if value in choices
                else f"must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )

        return self.get(key, default, str, check)

    def finish(self) -> None:
        for key in sorted(set(self.raw) - self.seen):
            if key.lower() in SECRET_KEYS or key.lower().endswith(
                ("_secret", "_token", "password")
            ):
                self.problem(
                    key,
                    "secrets never go in the config file; set them in the environment or a systemd credential",
                )
            else:
                self.problem(key, "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value!r}"


def _at_least_one(value: Any) -> str | None:
    return None if value >= 1 else f"must be at least 1, got {value!r}"


def _hex_color(value: Any) -> str | None:
    try:
        Rgb.parse(value)
    except ValueError:
        return f"must be a colour like '#ffffff', got {value!r}"
    return None


def _http_url(value: Any) -> str | None:
    ok = value.startswith(("https://", "http://")) and "?" not in value and "@" not in value
    return None if ok else f"must be an http(s) URL without credentials or query, got {value!r}"


def _read_source(data: Mapping[str, Any], problems: list[str]) -> SourceSettings:
    r = _Reader(data, "source", problems)
    kind = r.choice("kind", "local", ("local", "dropbox"))
    default_root = DEFAULT_DROPBOX_ROOT if kind == "dropbox" else DEFAULT_ROOT
    root = r.get("root", default_root, str, lambda v: None if v.strip() else "must not be empty")
    if kind == "dropbox" and not root.startswith("/"):
        r.problem("root", f"a Dropbox root must start with '/', got {root!r}")
    settings = SourceSettings(
        kind=kind,
        root=root,
        poll_interval=r.get("poll_interval", 30.0, float, _positive),
        recursive=r.get("recursive", False, bool),
        dedupe=r.choice("dedupe", "content", ("content", "off")),
        settle_seconds=r.get("settle_seconds", 2.0, float, _non_negative),
        longpoll=r.get("longpoll", True, bool),
    )
    r.finish()
    return settings


def _read_engine(data: Mapping[str, Any], problems: list[str]) -> EngineSettings:
    r = _Reader(data, "engine", problems)
    color = r.get("background_color", None, str, _hex_color)
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
        workers=r.get("workers", 2, int, _at_least_one),
        model=r.choice("model", "u2netp", ("u2netp", "u2net")),
        max_pixels=r.get("max_pixels", 50_000_000, int, _at_least_one),
    )
    r.finish()
    return settings


def _read_simple(
    data: Mapping[str, Any],
    section: str,
    cls: type[T],
    problems: list[str],
    checks: Mapping[str, Callable[[Any], str | None]] | None = None,
    choices: Mapping[str, tuple[str, ...]] | None = None,
) -> T:
    """Read a table whose keys map one-to-one onto a dataclass's fields and defaults."""
    r = _Reader(data, section, problems)
    defaults = cls()
    values: dict[str, Any] = {}
    for name in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        default = getattr(defaults, name)
        if choices and name in choices:
            values[name] = r.choice(name, default, choices[name])
            continue
        kind: type | tuple[type, ...] = type(default)
        if isinstance(default, tuple):
            value = r.get(name, list(default), list, _string_list)
            values[name] = tuple(value)
            continue
        values[name] = r.get(name, default, kind, (checks or {}).get(name))
    r.finish()
    return cls(**values)


def _string_list(value: Any) -> str | None:
    ok = value and all(isinstance(v, str) and v for v in value)
    return None if ok else "must be a non-empty list of strings"


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

    return _read_simple(
        data,
        "ledger",
        LedgerSettings,
        problems,
        checks={"url": check_url, "lease_seconds": _positive},
    )


def parse_settings(data: Mapping[str, Any], config_path: str | None = None) -> Settings:
    """Validate a parsed TOML document completely; raise ConfigError listing every problem."""
    problems: list[str] = []
    known = set(Settings.__dataclass_fields__) - {"config_path"}
    for section in sorted(set(data) - known):
        problems.append(f"{section}: unknown section")
    settings = Settings(
        source=_read_source(data, problems),
        engine=_read_engine(data, problems),
        ledger=_read_ledger(data, problems),
        archive=_read_simple(
            data,
            "archive",
            ArchiveSettings,
            problems,
            choices={"policy": ("move", "delete", "keep")},
        ),
        retry=_read_simple(
            data,
            "retry",
            RetrySettings,
            problems,
            checks={
                "max_attempts": _at_least_one,
                "backoff_initial": _non_negative,
                "backoff_multiplier": _at_least_one,
                "backoff_max": _non_negative,
            },
        ),
        log=_read_simple(
            data,
            "log",
            LogSettings,
            problems,
            choices={
                "format": ("json", "text"),
                "level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            },
        ),
        service=_read_simple(
            data, "service", ServiceSettings, problems, checks={"drain_timeout": _positive}
        ),
        dropbox=_read_simple(
            data,
            "dropbox",
            DropboxSettings,
            problems,
            checks={
                "timeout": _positive,
                "max_retries_on_error": _non_negative,
                "max_retries_on_rate_limit": _non_negative,
                "longpoll_timeout": lambda v: (
                    None if 30 <= v <= 480 else f"must be between 30 and 480, got {v!r}"
                ),
            },
        ),
        photoshop=_read_simple(
            data,
            "photoshop",
            PhotoshopSettings,
            problems,
            checks={
                "api_url": _http_url,
                "ims_url": _http_url,
                "submit_limit": _at_least_one,
                "submit_period": _positive,
                "max_in_flight": _at_least_one,
                "poll_initial": _positive,
                "poll_multiplier": _at_least_one,
                "poll_max": _positive,
                "job_timeout": _positive,
                "request_timeout": _positive,
                "color_decontamination": lambda v: (
                    None if 0 <= v <= 1 else f"must be between 0 and 1, got {v!r}"
                ),
            },
        ),
        metrics=_read_simple(
            data,
            "metrics",
            MetricsSettings,
            problems,
            checks={
                "port": lambda v: None if 0 <= v <= 65535 else f"must be a TCP port, got {v!r}"
            },
        ),
        config_path=config_path,
    )
    _cross_check(settings, problems)
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_check(settings: Settings, problems: list[str]) -> None:
    if settings.engine.kind == "photoshop" and settings.source.kind == "local":
        problems.append(
            'engine.kind: the Photoshop engine needs source.kind = "dropbox": Adobe must '
            "fetch each input by URL, which a local folder cannot provide"
        )


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
