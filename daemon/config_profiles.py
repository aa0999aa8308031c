"""`[[profile]]` tables and their `[[profile.output]]` tables -> `Profile` values, every
problem collected with the others (`profile.amazon.output[2].canvas: ...`; outputs are
counted from 1). `config` calls `read_profiles` and reports the problems together."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from daemon.config_reader import TableReader, at_least_one, hex_color
from daemon.models import Align, Mode, OutputFormat, OutputSpec, Padding, Profile, Rgb

ENGINES = ("local", "photoshop")
MAX_CANVAS_SIDE = 20_000
_CANVAS = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")
_ASPECT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*")
_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def read_profiles(
    data: Mapping[str, Any], recursive: bool, problems: list[str]
) -> tuple[Profile, ...]:
    """Every `[[profile]]`, in file order (the first whose `match` matches wins)."""
    raw = data.get("profile", [])
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        problems.append("profile: must be an array of tables ([[profile]])")
        return ()
    profiles: list[Profile] = []
    names: set[str] = set()
    for number, table in enumerate(raw, 1):
        profile = _read_profile(table, number, recursive, problems)
        if profile is None:
            continue
        if profile.name in names:
            problems.append(f"profile.{profile.name}: a second profile has this name")
        names.add(profile.name)
        profiles.append(profile)
    return tuple(profiles)


def _read_profile(
    table: Mapping[str, Any], number: int, recursive: bool, problems: list[str]
) -> Profile | None:
    name = table.get("name")
    label = f"profile.{name}" if isinstance(name, str) and name else f"profile[{number}]"
    r = TableReader({label: table}, label, problems)
    name = r.get("name", "", str, _non_empty)
    if "name" not in table:
        r.problem("name", "missing (every [[profile]] needs a name)")
    match: list[str] = r.get("match", [], list, _globs)
    if "match" not in table:
        r.problem("match", 'missing: a list of globs relative to input/, e.g. ["amazon/**"]')
    for pattern in match if isinstance(match, list) else ():
        if not recursive and _needs_subfolder(pattern):
            r.problem(
                "match",
                f"{pattern!r} can never match: source.recursive = false, so only files "
                "directly in input/ are processed",
            )
    engine = r.get("engine", None, str, _one_of(ENGINES))
    tables: list[Any] = r.get("output", [], list)
    r.finish()
    outputs = _read_outputs(tables, label, problems)
    if not name:
        return None
    return Profile(name=name, match=tuple(match), outputs=outputs, engine=engine)


def _read_outputs(tables: Any, label: str, problems: list[str]) -> tuple[OutputSpec, ...]:
    if not tables or not all(isinstance(t, Mapping) for t in tables):
        problems.append(f"{label}.output: needs one or more [[profile.output]] tables")
        return ()
    outputs = [read_output(t, f"{label}.output[{n}]", problems) for n, t in enumerate(tables, 1)]
    places: dict[tuple[str, str], int] = {}
    for number, spec in enumerate(outputs, 1):
        place = (spec.folder.lower(), spec.format.extension)
        if place in places:
            problems.append(
                f"{label}.output[{number}]: same folder and format as output[{places[place]}] "
                "(both would be one file): set a different folder"
            )
        places.setdefault(place, number)
    return tuple(outputs)


def read_output(table: Mapping[str, Any], label: str, problems: list[str]) -> OutputSpec:
    """One `[[profile.output]]`; keys that contradict each other are problems too."""
    r = TableReader({label: table}, label, problems)
    fmt = OutputFormat(r.choice("format", "png", tuple(f.value for f in OutputFormat)))
    quality = r.get("quality", 90, int, _between(1, 100))
    color = r.get("background_color", None, str, hex_color)
    spec = OutputSpec(
        format=fmt,
        quality=quality,
        background_color=Rgb.parse(color) if color else None,
        mode=Mode(r.choice("mode", "cutout", tuple(m.value for m in Mode))),
        trim=r.get("trim", False, bool),
        padding=_padding(r),
        canvas=_ratio(r, "canvas", _CANVAS, "'WxH' in pixels, e.g. '2000x2000'"),
        fill=r.get("fill", 0.85, float, _fill),
        align=Align(r.choice("align", "center", tuple(a.value for a in Align))),
        aspect=_ratio(r, "aspect", _ASPECT, "'W:H', e.g. '4:5'"),
        max_side=r.get("max_side", None, int, at_least_one),
        folder=r.get("folder", "", str, _folder),
    )
    r.finish()
    _check_combinations(r, spec, set(table))
    return spec


def _check_combinations(r: TableReader, spec: OutputSpec, keys: set[str]) -> None:
    if "quality" in keys and spec.format is OutputFormat.PNG:
        r.problem("quality", "applies to webp and jpeg only (PNG is lossless)")
    if {"canvas", "aspect"} <= keys:
        r.problem("aspect", "cannot be combined with canvas (canvas fixes the size)")
    if {"canvas", "max_side"} <= keys:
        r.problem("max_side", "cannot be combined with canvas (canvas fixes the size)")
    crops = spec.trim or "canvas" in keys or "aspect" in keys
    if "padding" in keys and not crops:
        r.problem("padding", "is added around the trimmed subject: needs trim, canvas or aspect")
    if "fill" in keys and "canvas" not in keys:
        r.problem("fill", "applies to canvas only")
    if "align" in keys and not {"canvas", "aspect"} & keys:
        r.problem("align", "applies to canvas or aspect only")
    if spec.background_color is not None and spec.mode is Mode.MASK:
        r.problem("background_color", 'has no effect with mode = "mask"')


def _padding(r: TableReader) -> Padding | None:
    value = r.get("padding", None, (int, float, str))
    if value is None:
        return None
    if isinstance(value, str):
        found = _PERCENT.fullmatch(value)
        if found is None:
            r.problem("padding", f'must be pixels (e.g. 40) or "N%" (e.g. "5%"), got {value!r}')
            return None
        return Padding(float(found.group(1)), percent=True)
    if value < 0:
        r.problem("padding", f"must be 0 or more, got {value!r}")
        return None
    return Padding(float(value))


def _ratio(
    r: TableReader, key: str, pattern: re.Pattern[str], expected: str
) -> tuple[int, int] | None:
    value = r.get(key, None, str)
    if value is None:
        return None
    found = pattern.fullmatch(value)
    if found is None:
        r.problem(key, f"must be {expected}, got {value!r}")
        return None
    first, second = (float(group) for group in found.groups())
    if key == "aspect":  # '1.91:1' -> (191, 100): keep the ratio in whole numbers
        first, second = first * 100, second * 100
    width, height = round(first), round(second)
    if key == "aspect" and width and height:
        divisor = math.gcd(width, height)
        width, height = width // divisor, height // divisor
    limit = MAX_CANVAS_SIDE if key == "canvas" else None
    if width < 1 or height < 1 or (limit and max(width, height) > limit):
        r.problem(key, f"sides must be between 1 and {limit or 'any'}, got {value!r}")
        return None
    return width, height


def _needs_subfolder(pattern: str) -> bool:
    """True when every path the glob matches has a folder part that is not `**` (so no
    file directly in input/ can match it)."""
    parts = PurePosixPath(pattern).parts
    return any(part != "**" for part in parts[:-1])


def _globs(value: Any) -> str | None:
    if not value or not all(isinstance(v, str) and v for v in value):
        return "must be a non-empty list of globs"
    for pattern in value:
        if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
            return f"globs are relative to input/ (no leading '/', no '..'), got {pattern!r}"
    return None


def _folder(value: Any) -> str | None:
    path = PurePosixPath(value)
    if value.startswith("/") or "\\" in value or ".." in path.parts:
        return f"must be a folder inside output/ (no leading '/', '\\' or '..'), got {value!r}"
    return None


def _non_empty(value: Any) -> str | None:
    return None if value.strip() else "must not be empty"


def _fill(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"must be more than 0 and at most 1, got {value!r}"


def _between(low: int, high: int) -> Any:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be {low}-{high}, got {value!r}"

    return check


def _one_of(choices: Sequence[str]) -> Any:
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(map(repr, choices))}, got {value!r}"

    return check
