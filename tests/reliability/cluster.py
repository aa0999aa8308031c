"""Several real `cutoutd run` processes on one PostgreSQL ledger: the scale-out suite's rig.

Each node is the real `.venv/bin/cutoutd` command with its own `node_id`, state directory
(`STATE_DIRECTORY`: spool and thumbnails), HTTP port, Dropbox refresh token (so the fake
can tell whose request it served) and log file. They share one fresh PostgreSQL database,
one fake Dropbox (the real `dropbox` SDK over HTTPS) and, when given, one fake Photoshop.

The rig kills (`SIGKILL`), freezes (`SIGSTOP`) and thaws (`SIGCONT`) nodes, waits on
conditions (ledger queries, the fakes' request logs), never on the clock alone, and reads
back what the assertions need: rows, events, cursors, the fakes' logs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy

from tests.e2e.conftest import CUTOUTD
from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakePhotoshop
from tests.reliability.harness import (
    Daemon,
    Sections,
    dropbox_sections,
    merge,
    write_config,
)

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
TERMINAL = frozenset({"succeeded", "failed", "skipped"})


# -- the database ---------------------------------------------------------------------------


@contextmanager
def fresh_database(prefix: str = "cutoutd_scale") -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards (its sessions too)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class LedgerView:
    """Read-only queries on the shared ledger, as the assertions need them."""

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url, pool_size=2, max_overflow=2)

    def close(self) -> None:
        self.engine.dispose()

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        try:
            with self.engine.connect() as connection:
                result = connection.execute(sqlalchemy.text(sql), params)
                return [dict(row._mapping) for row in result]
        except sqlalchemy.exc.ProgrammingError as exc:  # not migrated yet
            if "does not exist" in str(exc):
                return []
            raise

    def rows(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM items ORDER BY id")

    def events(self, since_id: int = 0) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM events WHERE id > :since ORDER BY id", since=since_id)

    def last_event_id(self) -> int:
        found = self.query("SELECT coalesce(max(id), 0) AS last FROM events")
        return int(found[0]["last"]) if found else 0

    def cursors(self) -> list[str]:
        return [row["cursor"] for row in self.query("SELECT cursor FROM cursors")]

    def outputs(self) -> list[dict[str, Any]]:
        return self.query(
            "SELECT o.*, i.path AS input_path FROM outputs o JOIN items i ON i.id = o.item_id"
            " ORDER BY o.id"
        )

    def claimed_by(self, node_id: str, *, with_job: bool = False) -> list[dict[str, Any]]:
        job = " AND job_id IS NOT NULL" if with_job else ""
        return self.query(
            f"SELECT * FROM items WHERE status = 'processing' AND claimed_by = :node{job}",
            node=node_id,
        )

    def finished(self) -> set[str]:
        """Inputs whose revision succeeded and whose input was archived."""
        return {
            row["path"]
            for row in self.rows()
            if row["status"] == "succeeded" and row["archived_path"] and not row["relocate_to"]
        }


class CursorWatch:
    """Samples the stored cursor(s) in a thread, so a test can check it never went back."""

    def __init__(self, ledger: LedgerView, interval: float = 0.02) -> None:
        self.ledger, self.interval = ledger, interval
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CursorWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for cursor in self.ledger.cursors():
                if not self.seen or self.seen[-1][1] != cursor:
                    self.seen.append((time.monotonic(), cursor))
            self._stop.wait(self.interval)


# -- the nodes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Node:
    """One `cutoutd run` of the cluster."""

    name: str
    state: Path
    port: int
    refresh_token: str
    daemon: Daemon
    frozen: bool = False

    @property
    def pid(self) -> int:
        assert self.daemon.process is not None
        return self.daemon.process.pid

    def alive(self) -> bool:
        return self.daemon.alive()

    def kill(self) -> None:
        """SIGKILL: no drain, no release, no last heartbeat."""
        self.frozen = False
        self.daemon.kill()

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets and claims but runs no instruction."""
        assert self.daemon.process is not None
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def ready(self) -> bool:
        return '"service.ready"' in self.daemon.stderr()

    def log(self) -> str:
        return self.daemon.stderr()


@dataclass
class Cluster:
    """N nodes on one ledger and the same fakes; `close()` stops whatever still runs."""

    tmp_path: Path
    database_url: str
    dropbox: FakeDropbox | None
    adobe: FakePhotoshop | None = None
    extra: Sections | None = None
    lease_seconds: float = 4.0
    base: Sections | None = None  # the sections to start from; default: dropbox_sections()
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger = LedgerView(self.database_url)

    # -- configuration

    def sections(self, name: str, state: Path, port: int) -> dict[str, dict[str, Any]]:
        if self.base is not None:
            base = merge(self.base, None)
        else:
            base = dropbox_sections(state / "unused.sqlite3", self.adobe)
        base["ledger"] = {
            "url": self.database_url,
            "node_id": name,
            "lease_seconds": self.lease_seconds,
        }
        base["http"] = {"port": port}
        base["spool"] = {"directory": str(state / "spool")}
        return merge(base, self.extra)

    def environment(self, state: Path, refresh_token: str) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.dropbox is not None:
            env.update(self.dropbox.daemon_environment(), DROPBOX_REFRESH_TOKEN=refresh_token)
        if self.adobe is not None:
            env.update(self.adobe.daemon_environment())
        env["STATE_DIRECTORY"] = str(state)
        env.pop("JOURNAL_STREAM", None)
        return env

    def add(self, name: str | None = None) -> Node:
        name = name or f"node-{len(self.nodes) + 1}"
        state = self.tmp_path / name
        state.mkdir(parents=True, exist_ok=True)
        port = free_port()
        token = self.dropbox.issue_refresh_token() if self.dropbox else ""
        config = write_config(state / "cutoutd.toml", self.sections(name, state, port))
        daemon = Daemon(config, self.environment(state, token), state / "logs")
        node = Node(name, state, port, token, daemon)
        self.nodes.append(node)
        return node

    # -- life cycle

    def migrate(self) -> subprocess.CompletedProcess[str]:
        """`cutoutd ledger migrate`, the explicit step before the nodes start."""
        node = self.nodes[0] if self.nodes else self.add()
        result = subprocess.run(
            [CUTOUTD, "--config", str(node.daemon.config), "ledger", "migrate"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **node.daemon.env},
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    def start(self, count: int = 3, *, migrate: bool = True) -> list[Node]:
        """Add nodes up to `count`, migrate the ledger, start them all, wait until ready."""
        while len(self.nodes) < count:
            self.add()
        if migrate:
            self.migrate()
        for node in self.nodes:
            if not node.alive():
                node.daemon.start()
        self.wait(lambda: all(node.ready() for node in self.nodes), 90, "every node ready")
        return self.nodes

    def close(self) -> None:
        for node in self.nodes:
            if node.daemon.process is None:
                continue
            if node.frozen:
                node.thaw()
            if node.alive():
                node.daemon.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.daemon.process is None:
                continue
            try:
                node.daemon.process.wait(30)
            except subprocess.TimeoutExpired:
                node.daemon.kill()
        self.ledger.close()

    # -- waiting

    def wait(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: str,
        *,
        interval: float = 0.05,
        running: list[Node] | None = None,
    ) -> float:
        """Wait until `predicate()`; fail early when a node that should run exited. Returns
        the seconds it took."""
        watched = running if running is not None else [n for n in self.nodes if not n.frozen]
        watched = [n for n in watched if n.daemon.process is not None and n.alive()]
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if predicate():
                return time.monotonic() - started
            for node in watched:
                if not node.alive():
                    raise AssertionError(
                        f"{node.name} exited ({node.daemon.process and node.daemon.process.returncode})"
                        f" while waiting for {what}:\n{node.log()[-4000:]}"
                    )
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        tails = "\n".join(f"--- {n.name}\n{n.log()[-2500:]}" for n in self.nodes)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")

    def wait_finished(self, names: set[str], timeout: float, what: str = "") -> float:
        return self.wait(
            lambda: names <= self.ledger.finished(),
            timeout,
            what or f"{len(names)} images to finish",
        )

    # -- what happened

    def events_by(self, node: Node, since_id: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.ledger.events(since_id) if e["actor"] == node.name]

    def dropbox_writes_by(self, node: Node, since: int = 0) -> list[str]:
        """Routes of the writing Dropbox requests `node` made from request index `since` on."""
        assert self.dropbox is not None
        writes = ("files/upload", "files/move", "files/copy", "files/delete", "files/save_url")
        routes = [r.path.split("?", 1)[0].removeprefix("/2/") for r in
                  self.dropbox.requests_of(node.refresh_token, since)]  # fmt: skip
        return [r for r in routes if r.startswith(writes)]


def sliding_window_max(times: list[float], period: float) -> int:
    """The most timestamps any half-open window of `period` seconds holds."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= period:
            start += 1
        most = max(most, end - start + 1)
    return most
