"""The real `cutoutd ledger migrate` and `cutoutd nodes` on a real PostgreSQL ledger (a
private schema), with nodes registered by Ledger objects as running daemons do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.ledger import Ledger
from daemon.ledger.database import head_revision
from daemon.models import ChangeBatch, RemoteFile
from tests.e2e.conftest import run_cutoutd
from tests.postgres import private_schema


@pytest.fixture
def pg_config(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with private_schema() as url:
        config = tmp_path / "cutoutd.toml"
        config.write_text(
            f'[source]\nroot = "{tmp_path / "root"}"\n[ledger]\nurl = "{url}"\n'
            '[log]\nformat = "json"\n'
        )
        yield url, config


def test_ledger_migrate_is_explicit_and_says_what_it_did(pg_config: tuple[str, Path]) -> None:
    _, config = pg_config
    first = run_cutoutd("--config", str(config), "ledger", "migrate", timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"schema none -> {head_revision()}" in first.stdout
    assert "postgresql" in first.stdout and "search_path" in first.stdout
    again = run_cutoutd("--config", str(config), "ledger", "migrate", timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"schema {head_revision()}, current" in again.stdout


def test_nodes_lists_heartbeats_claims_and_the_lister(pg_config: tuple[str, Path]) -> None:
    url, config = pg_config
    a, b = Ledger(url, node_id="shop-a"), Ledger(url, node_id="shop-b")
    try:
        a.migrate()
        for ledger in (a, b):
            ledger.register_node()
        files = tuple(RemoteFile(f"{n}.jpg", f"{n}.jpg", "01", 1, f"{n:064d}") for n in range(3))
        a.record_changes("s", ChangeBatch(files, "c"), "local")
        assert a.claim_next() and a.claim_next() and b.claim_next()
        assert b.hold_lease()
        result = run_cutoutd("--config", str(config), "nodes", "--format", "json", timeout=60)
        assert result.returncode == 0, result.stderr
        rows = {row["node"]: row for row in json.loads(result.stdout)}
        assert {n: (r["state"], r["claims"], r["lister"]) for n, r in rows.items()} == {
            "shop-a": ("alive", 2, False),
            "shop-b": ("alive", 1, True),
        }
        assert rows["shop-a"]["schema"] == head_revision()
        table = run_cutoutd("--config", str(config), "nodes", "--format", "table", timeout=60)
        assert table.stdout.splitlines()[0].split()[:3] == ["NODE", "STATE", "LAST_HEARTBEAT"]
    finally:
        a.close()
        b.close()
