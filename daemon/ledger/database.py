"""Connecting: SQLite in WAL mode with a busy timeout, PostgreSQL, and migrations on open."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from daemon.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 30_000
_PG_MIGRATION_LOCK = 0x6375746F  # "cuto"


def create_database_engine(
    url: str,
    *,
    writer: bool = True,
    pool_size: int | None = None,
    idle_in_transaction: float | None = None,
) -> Engine:
    """An Engine for `url`. SQLite: WAL, busy timeout, foreign keys, and `BEGIN IMMEDIATE`
    for writers so two writers queue on the busy timeout instead of deadlocking.
    PostgreSQL: `pool_size` connections kept open (`[ledger] pool_size`; SQLAlchemy's 5
    when None), as many again opened under bursts; sessions in UTC. `idle_in_transaction`
    (seconds): the server ends a session that sits that long inside a transaction, so a
    node frozen or cut off mid-transaction (SIGSTOP, a paused VM) cannot hold its row and
    advisory locks (submission slots, leases, the cursor) from the other nodes for longer."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError([f"ledger.url: not a SQLAlchemy URL: {url!r}"]) from None
    if parsed.get_backend_name() != "sqlite":
        sizes = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": pool_size}
        server = create_engine(url, pool_pre_ping=True, future=True, **sizes)

        @event.listens_for(server, "connect")
        def _utc(dbapi_connection: Any, _record: Any) -> None:
            # naive UTC values are bound to timestamptz columns: read them as UTC
            cursor = dbapi_connection.cursor()
            cursor.execute("SET TIME ZONE 'UTC'")
            if idle_in_transaction:
                milliseconds = max(1000, int(idle_in_transaction * 1000))
                cursor.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")
            cursor.close()
            dbapi_connection.commit()

        return server
    database = parsed.database or ""
    if database and database != ":memory:":
        _create_private_file(Path(database))
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def _create_private_file(path: Path) -> None:
    """The ledger holds paths and job ids: create it (and its folder) readable by us only."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration, read from the version files' `revision` and `down_revision`
    lines: alembic (~0.1-0.3 s to import) is loaded only when there is something to do."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        for name, value in re.findall(r"^(revision|down_revision)\b[^=\n]*=(.*)$", source, re.M):
            found = re.findall(r"[\"']([^\"']+)[\"']", value)
            (revisions if name == "revision" else parents).update(found)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the ledger migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The schema's revision (alembic's `alembic_version` table); None before the first."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return None if version is None else str(version)


def migrate(engine: Engine) -> bool:
    """Upgrade the schema to head; True if anything ran. Safe with several processes. When
    the schema is current this is one query, and alembic is not imported."""
    if current_revision(engine) == head_revision():
        return False
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return True
