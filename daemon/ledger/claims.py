"""Claims: the one-statement claim, fencing tokens, and the time claims and leases use.

On PostgreSQL every time a claim or a lease is measured against is the database's own
(`now()`), so nodes whose clocks disagree still agree on who holds what. On SQLite (one
machine) it is the ledger's injected clock, which tests move by hand.

A claim is `UPDATE items ... WHERE id = (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING ...`: concurrent claimers skip each other's candidate rows instead of queueing
on the oldest one. The partial unique indexes `uq_items_processing_path` and
`uq_items_processing_hash` make two claims on one input (or, with dedupe, one content hash)
impossible; a claimer that loses that race tries again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Update, exists, func, or_, select, update
from sqlalchemy.orm import aliased

from daemon.ledger.schema import ItemRow
from daemon.models import Item, ItemStatus

CLAIM_ATTEMPTS = 8  # a claim that loses the one-claim-per-input race tries the next row


def is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def database_now(connection: Connection, clock: Callable[[], datetime]) -> Any:
    """`now()` on PostgreSQL (the database's clock); the injected clock's value on SQLite."""
    return func.now() if is_postgresql(connection) else clock()


def later(now: Any, delta: timedelta) -> Any:
    """`now + delta`, as SQL (`now() + interval`) or as a value."""
    return now + delta


def fresh_token() -> int:
    """A fencing token: random, so no two claims ever share one (63-bit BIGINT)."""
    return secrets.randbelow(2**62) + 1


def claim_statement(
    connection: Connection,
    *,
    node_id: str,
    token: int,
    now: Any,
    lease: timedelta,
    dedupe: bool,
    started_at: datetime,
) -> Update:
    """Take the oldest due pending revision whose input (and, with `dedupe`, whose content)
    no other claim holds: one statement, returning the claimed row. `now` (the database's
    clock on PostgreSQL) decides what is due and when the lease ends; `started_at` is the
    audit trail's time, the ledger's clock like every other time the audit compares."""
    busy = aliased(ItemRow)
    due = or_(ItemRow.next_attempt_at.is_(None), ItemRow.next_attempt_at <= now)
    candidate = select(ItemRow.id).where(
        ItemRow.status == ItemStatus.PENDING,
        due,
        ~exists().where(
            busy.status == ItemStatus.PROCESSING, busy.path_lower == ItemRow.path_lower
        ),
    )
    if dedupe:
        candidate = candidate.where(
            ~exists().where(
                busy.status == ItemStatus.PROCESSING, busy.dedupe_key == ItemRow.content_hash
            )
        )
    candidate = candidate.order_by(ItemRow.id).limit(1)
    if is_postgresql(connection):
        candidate = candidate.with_for_update(skip_locked=True)
    return (
        update(ItemRow)
        # no status check here: the row is locked (PostgreSQL) or the writer alone
        # (SQLite's BEGIN IMMEDIATE), and a second condition lets the planner scan an
        # index of every pending row instead of fetching one by its key
        .where(ItemRow.id == candidate.scalar_subquery())
        .values(
            status=ItemStatus.PROCESSING,
            attempts=ItemRow.attempts + 1,
            started_at=started_at,
            claimed_by=node_id,
            lease_expires_at=later(now, lease),
            next_attempt_at=None,
            claim_token=token,
            dedupe_key=ItemRow.content_hash if dedupe else None,
        )
        .returning(*ItemRow.__table__.c)
    )


def claim_fence(item: Item | int) -> tuple[int, list[ColumnElement[bool]]]:
    """The row id and the conditions a write about this claim must meet: a claimed `Item`
    carries its token; a bare id (the operator's commands) is not fenced."""
    if isinstance(item, int):
        return item, []
    if item.claim_token is None:
        return item.id, []
    return item.id, [ItemRow.claim_token == item.claim_token]


def move_fence(item: Item | int) -> tuple[int, list[ColumnElement[bool]]]:
    """Like `claim_fence`, for the archive move: the move token handed by the sweep, or the
    claim token of the claim that finished the row (its move token from then on)."""
    if isinstance(item, int):
        return item, []
    token = item.move_token if item.move_token is not None else item.claim_token
    if token is None:
        return item.id, []
    return item.id, [ItemRow.move_token == token]
