"""Which profile an input gets, and the names its outputs may take. Pure functions."""

from __future__ import annotations

from pathlib import PurePosixPath

from wcmatch import glob

from daemon.config import Settings
from daemon.models import Profile

# `**` spans folders, `*` stays within one; hidden names match too; case is ignored
# (Dropbox ignores it, and a folder named `Amazon` is meant by `amazon/**`).
GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.IGNORECASE


def choose_profile(settings: Settings, input_path: str) -> Profile:
    """The first `[[profile]]` one of whose `match` globs matches `input_path` (relative to
    input/); the default profile when none does."""
    for profile in settings.profiles:
        if glob.globmatch(input_path, list(profile.match), flags=GLOB_FLAGS):
            return profile
    return settings.default_profile


def output_candidates(input_path: str, extension: str, folder: str = "") -> list[str]:
    """Output names for an input, in order of preference, relative to output/.

    `photos/a.jpg` -> `<folder>/photos/a.png`. When another input in the same folder already
    owns that name (`photos/a.png` and `photos/a.jpg` both exist), the later one keeps its
    original extension in the name: `<folder>/photos/a.jpg.png`. Nothing is overwritten
    silently.
    """
    path = (
        PurePosixPath(folder.strip("/"), input_path)
        if folder.strip("/")
        else PurePosixPath(input_path)
    )
    return [
        path.with_suffix(f".{extension}").as_posix(),
        path.with_name(f"{path.name}.{extension}").as_posix(),
    ]
