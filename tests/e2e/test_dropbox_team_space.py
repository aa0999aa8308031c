"""Team spaces end to end: the real `cutoutd` command against the HTTPS Dropbox fake in
team-space mode. The root folder sits in a team folder, and a folder of the same name (a
decoy) sits in the member's home namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import run_cutoutd
from tests.fakes.dropbox_server import FakeDropbox
from tests.helpers import alpha_iou, encode, shape_image

ROOT = "/Marketing/RemoveBGProcess"
HOME = "/Alice Smith"  # where the member's home namespace sits in the team's root
DECOY = f"{HOME}{ROOT}"


@pytest.fixture
def team() -> Iterator[FakeDropbox]:
    with FakeDropbox(https=True, team_space=True) as server:
        yield server


def config_for(tmp_path: Path, path_root: str | None, root: str = ROOT) -> Path:
    path = tmp_path / f"cutoutd-{path_root}.toml"
    dropbox = "[dropbox]\ntimeout = 20\nmax_retries_on_error = 1\n"
    if path_root is not None:
        dropbox += f'path_root = "{path_root}"\n'
    path.write_text(
        f'[source]\nkind = "dropbox"\nroot = "{root}"\npoll_interval = 0.5\nsettle_seconds = 0\n'
        f'[ledger]\nurl = "sqlite:///{tmp_path / f"ledger-{path_root}.sqlite3"}"\n'
        f'{dropbox}[log]\nformat = "json"\nlevel = "INFO"\n'
    )
    return path


def put_images(
    team: FakeDropbox, folder: str, names: list[str], seed: int
) -> dict[str, np.ndarray]:
    masks = {}
    for n, name in enumerate(names):
        k = n + 7 * seed
        image, mask = shape_image(
            (320, 240),
            shape="ellipse" if k % 2 else "rectangle",
            color=(30 + 11 * k, 90, 200 - 9 * k),
        )
        team.put_file(f"{folder}/input/{name}", encode(image, "JPEG", quality=95))
        masks[name] = mask
    return masks


def assert_processed(team: FakeDropbox, folder: str, masks: dict[str, np.ndarray]) -> None:
    outputs = team.files_under(f"{folder}/output")
    archived = team.files_under(f"{folder}/archive")
    for name, mask in masks.items():
        assert alpha_iou(outputs[f"{folder}/output/{name.rsplit('.', 1)[0]}.png"], mask) >= 0.9
        assert f"{folder}/archive/{name}" in archived
    assert team.files_under(f"{folder}/input") == {}


@pytest.mark.parametrize(
    ("path_root", "processed", "untouched"),
    [(None, ROOT, DECOY), ("root", ROOT, DECOY), ("home", DECOY, ROOT)],
    ids=["default", "root", "home"],
)
def test_the_configured_namespace_is_processed_and_the_other_left_alone(
    team: FakeDropbox, tmp_path: Path, path_root: str | None, processed: str, untouched: str
) -> None:
    """With the default (and "root"), `root` is the team folder and the decoy in the home
    namespace is untouched; with "home", the same `root` names the decoy instead."""
    masks = put_images(team, processed, ["a.jpg", "b.jpg", "c.jpg"], seed=1)
    put_images(team, untouched, ["a.jpg", "other.jpg"], seed=2)
    before = team.files_under(untouched)
    config = config_for(tmp_path, path_root)
    env = team.daemon_environment()

    check = run_cutoutd("--config", str(config), "check", env=env)
    assert check.returncode == 0, check.stderr
    namespace = "home namespace" if path_root == "home" else "root namespace"
    assert f"storage: Dropbox team space (business); {namespace} " in check.stdout
    assert f"root:    {ROOT} exists" in check.stdout

    result = run_cutoutd("--config", str(config), "run", "--once", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("processed 3: 3 succeeded"), result.stdout
    assert_processed(team, processed, masks)
    assert team.files_under(untouched) == before  # not read into, not written to


def test_check_points_at_the_other_namespace(team: FakeDropbox, tmp_path: Path) -> None:
    """The folder exists only in the member's home namespace: `check` says where it is and
    creates nothing in the team's root."""
    put_images(team, f"{HOME}/Photos/RemoveBGProcess", ["a.jpg"], seed=3)
    config = config_for(tmp_path, None, root="/Photos/RemoveBGProcess")
    check = run_cutoutd("--config", str(config), "check", env=team.daemon_environment())
    assert check.returncode == 1, check.stderr
    assert 'exists in the home namespace: set [dropbox] path_root = "home"' in check.stdout
    assert team.files_under("/Photos") == {}
    assert team.metadata("/Photos") is None
