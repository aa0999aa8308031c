"""Reading one TOML table into settings while collecting every problem, and the value
checks the sections share. `config` builds each section with these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

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

T = TypeVar("T")


class TableReader:
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


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value!r}"


def at_least_one(value: Any) -> str | None:
    return None if value >= 1 else f"must be at least 1, got {value!r}"


def hex_color(value: Any) -> str | None:
    text = str(value)
    ok = (
        len(text) == 7
        and text.startswith("#")
        and all(c in "0123456789abcdefABCDEF" for c in text[1:])
    )
    return None if ok else f"must be a colour like '#ffffff', got {value!r}"


def http_url(value: Any) -> str | None:
    ok = value.startswith(("https://", "http://")) and "?" not in value and "@" not in value
    return None if ok else f"must be an http(s) URL without credentials or query, got {value!r}"


def read_table(
    data: Mapping[str, Any],
    section: str,
    cls: type[T],
    problems: list[str],
    checks: Mapping[str, Callable[[Any], str | None]] | None = None,
    choices: Mapping[str, tuple[str, ...]] | None = None,
) -> T:
    """Read a table whose keys map one-to-one onto a dataclass's fields and defaults."""
    r = TableReader(data, section, problems)
    defaults = cls()
    values: dict[str, Any] = {}
    for name in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        default = getattr(defaults, name)
        if choices and name in choices:
            values[name] = r.choice(name, default, choices[name])
            continue
        kind: type | tuple[type, ...] = type(default)
        if isinstance(default, tuple):
            value = r.get(name, list(default), list, string_list)
            values[name] = tuple(value)
            continue
        values[name] = r.get(name, default, kind, (checks or {}).get(name))
    r.finish()
    return cls(**values)


def string_list(value: Any) -> str | None:
    ok = value and all(isinstance(v, str) and v for v in value)
    return None if ok else "must be a non-empty list of strings"
