"""Nodes and leases: who is alive on this ledger, and who lists.

Each daemon process registers a row in `nodes` and beats every few seconds; a beat moves
its row's `expires_at` and the leases of its claims (items and archive moves) to
now + `lease_seconds`. A node that stops beating (killed, stopped, cut off) loses its
claims to whichever node's `recover_expired` runs next.

A second live process with the same name is refused at registration: its `instance`
(random per process) differs and the row has not expired. The named lease `lister`
elects the one node that lists, longpolls, writes the cursor and sweeps owed moves:
acquired or renewed in one upsert, taken over once it expires.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from daemon import __version__
from daemon.errors import NodeConflictError
from daemon.ledger.claims import database_now, fresh_token, is_postgresql, later
from daemon.ledger.database import current_revision, head_revision, migrate
from daemon.ledger.outcomes import Outcomes
from daemon.ledger.schema import ItemRow, LeaseRow, NodeRow
from daemon.models import ItemStatus

LISTER = "lister"
FORGET_AFTER = timedelta(days=1)  # `cutoutd nodes` shows a dead node this long


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 probes it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by someone else
        return True
    return True


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One node as `cutoutd nodes` shows it."""

    name: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    alive: bool
    claims: int
    moves: int
    lister: bool
    schema_revision: str
    code_version: str


def _insert(connection: Connection) -> Any:
    return pg_insert if is_postgresql(connection) else sqlite_insert


class NodeLedger(Outcomes):
    """The ledger's operations on nodes and leases."""

    schema_problem: str | None = None  # why this node claims nothing (schema mismatch)
    instance: int = 0  # this process's registration (0: not registered)

    # -- schema -----------------------------------------------------------------------------

    def check_schema(self) -> str | None:
        """Compare the schema with what this code needs; remember (and return) the problem.
        Until it is solved, `claim_next` raises SchemaMismatchError."""
        found, needed = current_revision(self.engine), head_revision()
        if found == needed:
            self.schema_problem = None
        elif found is None:
            self.schema_problem = "the ledger has no schema yet: run `cutoutd ledger migrate`"
        elif found < needed:
            self.schema_problem = (
                f"the ledger's schema is {found}, this node's code needs {needed}: "
                "run `cutoutd ledger migrate` (once, from any node)"
            )
        else:
            self.schema_problem = (
                f"the ledger's schema is {found}, newer than this node's code knows "
                f"({needed}): upgrade cutoutd on this node"
            )
        return self.schema_problem

    def prepare_schema(self) -> bool:
        """At a node's start; True when the schema changed. A SQLite ledger (one machine)
        is migrated as it always was. On PostgreSQL only an empty database gets its schema
        here: an upgrade is `cutoutd ledger migrate`, explicit, and until then a node whose
        code needs another schema claims nothing (`check_schema`)."""
        if not self.shared or current_revision(self.engine) is None:
            return migrate(self.engine)
        return False

    # -- membership -------------------------------------------------------------------------

    def register_node(self) -> None:
        """Add this process to `nodes`, or take over its name's row once that expired.
        NodeConflictError while another live process holds the name (PostgreSQL; a SQLite
        ledger has one machine, and its rows are simply taken over)."""
        instance = fresh_token()
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            values = {
                "name": self.node_id,
                "instance": instance,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": now,
                "heartbeat_at": now,
                "expires_at": later(now, self.lease),
                "schema_revision": head_revision(),
                "code_version": __version__,
            }
            statement = _insert(connection)(NodeRow).values(**values)
            replace = {k: statement.excluded[k] for k in values if k != "name"}
            if is_postgresql(connection):
                upsert = statement.on_conflict_do_update(
                    index_elements=["name"], set_=replace, where=NodeRow.expires_at < now
                )
            else:
                upsert = statement.on_conflict_do_update(index_elements=["name"], set_=replace)
            registered = connection.scalar(upsert.returning(NodeRow.instance))
            if registered is None:
                live = connection.execute(
                    select(NodeRow, func.now().label("db_now")).where(NodeRow.name == self.node_id)
                ).one()
                if live.host == values["host"] and not _process_alive(live.pid):
                    # an earlier run of this node on this machine, gone (a crash, then a
                    # restart): its name is free now, not only once its lease lapses
                    connection.execute(
                        update(NodeRow)
                        .where(NodeRow.name == self.node_id, NodeRow.instance == live.instance)
                        .values(**{k: v for k, v in values.items() if k != "name"})
                    )
                    self.instance = instance
                    return
                ago = (live.db_now - live.heartbeat_at).total_seconds()
                left = (live.expires_at - live.db_now).total_seconds()
                raise NodeConflictError(
                    f"another live node is named {self.node_id!r} (host {live.host}, pid "
                    f"{live.pid}, last heartbeat {ago:.0f} s ago): give each node its own "
                    f"[ledger] node_id, or stop that one (its name is free {left:.0f} s "
                    "after its last heartbeat)"
                )
        self.instance = instance

    def heartbeat(self) -> None:
        """Extend this node's row, the leases of its claims and moves, and its lister lease
        if it holds it. NodeConflictError if another process took the name over (this one
        was taken for dead: stopped or cut off past its lease)."""
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            until = later(now, self.lease)
            beat = connection.execute(
                update(NodeRow)
                .where(NodeRow.name == self.node_id, NodeRow.instance == self.instance)
                .values(heartbeat_at=now, expires_at=until)
            ).rowcount
            if beat != 1:
                raise NodeConflictError(
                    f"node {self.node_id!r} was taken over by another process meanwhile"
                )
            connection.execute(
                update(ItemRow)
                .where(ItemRow.claimed_by == self.node_id, ItemRow.status == ItemStatus.PROCESSING)
                .values(lease_expires_at=until)
            )
            connection.execute(
                update(ItemRow)
                .where(ItemRow.move_claimed_by == self.node_id)
                .values(move_lease_expires_at=until)
            )
            connection.execute(
                update(LeaseRow)
                .where(LeaseRow.holder == self.node_id, LeaseRow.expires_at >= now)
                .values(expires_at=until)
            )
            # rows of nodes gone for a day go (`<hostname>:<pid>` names pile up otherwise)
            connection.execute(delete(NodeRow).where(NodeRow.expires_at < now - FORGET_AFTER))

    def deregister_node(self) -> None:
        """A clean stop: the row goes, and the lister lease with it (claims were given back)."""
        with self.transaction() as connection:
            connection.execute(
                delete(NodeRow).where(
                    NodeRow.name == self.node_id, NodeRow.instance == self.instance
                )
            )
            connection.execute(delete(LeaseRow).where(LeaseRow.holder == self.node_id))
        self.instance = 0

    # -- leases -------------------------------------------------------------------------------

    def hold_lease(self, name: str = LISTER) -> bool:
        """Acquire the lease `name`, or renew it if this node holds it: one upsert. True
        while this node holds it; False while another node's lease runs."""
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            statement = _insert(connection)(LeaseRow).values(
                name=name,
                holder=self.node_id,
                token=fresh_token(),
                acquired_at=now,
                expires_at=later(now, self.lease),
            )
            same = LeaseRow.holder == statement.excluded.holder
            upsert = statement.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "holder": statement.excluded.holder,
                    "expires_at": statement.excluded.expires_at,
                    "token": case((same, LeaseRow.token), else_=statement.excluded.token),
                    "acquired_at": case(
                        (same, LeaseRow.acquired_at), else_=statement.excluded.acquired_at
                    ),
                },
                where=(LeaseRow.holder == self.node_id)
                | LeaseRow.holder.is_(None)
                | (LeaseRow.expires_at < now),
            )
            held = connection.scalar(upsert.returning(LeaseRow.holder))
        return held is not None

    def release_lease(self, name: str = LISTER) -> None:
        with self.transaction() as connection:
            connection.execute(
                delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == self.node_id)
            )

    def lease_holder(self, name: str = LISTER) -> str | None:
        """Who holds the lease now (None: nobody, or it expired)."""
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            holder: str | None = connection.scalar(
                select(LeaseRow.holder).where(LeaseRow.name == name, LeaseRow.expires_at >= now)
            )
        return holder

    # -- `cutoutd nodes` -------------------------------------------------------------------

    def node_reports(self) -> list[NodeReport]:
        """Every node row (live or not), its claims and whether it holds the lister lease."""
        with self.transaction() as connection:
            now = database_now(connection, self.clock)
            claims = dict(
                connection.execute(
                    select(ItemRow.claimed_by, func.count())
                    .where(ItemRow.status == ItemStatus.PROCESSING)
                    .group_by(ItemRow.claimed_by)
                ).all()
            )
            moves = dict(
                connection.execute(
                    select(ItemRow.move_claimed_by, func.count())
                    .where(ItemRow.move_claimed_by.is_not(None))
                    .group_by(ItemRow.move_claimed_by)
                ).all()
            )
            lister = connection.scalar(
                select(LeaseRow.holder).where(LeaseRow.name == LISTER, LeaseRow.expires_at >= now)
            )
            rows = connection.execute(
                select(NodeRow, (NodeRow.expires_at >= now).label("alive")).order_by(NodeRow.name)
            ).all()
        return [
            NodeReport(
                name=row.name,
                host=row.host,
                pid=row.pid,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                expires_at=row.expires_at,
                alive=bool(row.alive),
                claims=claims.get(row.name, 0),
                moves=moves.get(row.name, 0),
                lister=row.name == lister,
                schema_revision=row.schema_revision,
                code_version=row.code_version,
            )
            for row in rows
        ]
