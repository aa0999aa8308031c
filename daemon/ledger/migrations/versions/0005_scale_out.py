"""Several nodes on one ledger: claim tokens (fencing), one claim per input and per content
hash at a time, archive-move claims, the `nodes`, `leases`, `submit_slots` and
`output_names` tables.

Rows that already break "one claim per input" (two `processing` revisions of one input,
left by the race this revision closes) go back to `pending`, all but the oldest. Each
output name already in `outputs` is owned by the input that recorded it first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from daemon.ledger.schema import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PROCESSING = sa.text("status = 'processing'")


def upgrade() -> None:
    op.add_column("items", sa.Column("claim_token", sa.BigInteger(), nullable=True))
    op.add_column("items", sa.Column("dedupe_key", sa.String(64), nullable=True))
    op.add_column("items", sa.Column("move_claimed_by", sa.String(255), nullable=True))
    op.add_column("items", sa.Column("move_token", sa.BigInteger(), nullable=True))
    op.add_column("items", sa.Column("move_lease_expires_at", UtcDateTime(), nullable=True))
    op.execute(
        "UPDATE items SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL "
        "WHERE status = 'processing' AND EXISTS (SELECT 1 FROM items AS older "
        "WHERE older.status = 'processing' AND older.path_lower = items.path_lower "
        "AND older.id < items.id)"
    )
    op.create_index("ix_items_claimed_by", "items", ["claimed_by", "status"])
    op.create_index("ix_items_move_claimed_by", "items", ["move_claimed_by"])
    pending = sa.text("status = 'pending'")
    op.create_index(
        "ix_items_pending_id", "items", ["id"], sqlite_where=pending, postgresql_where=pending
    )
    hashed = sa.text("status = 'processing' AND dedupe_key IS NOT NULL")
    for name, column, where in (
        ("uq_items_processing_path", "path_lower", PROCESSING),
        ("uq_items_processing_hash", "dedupe_key", hashed),
    ):
        op.create_index(
            name, "items", [column], unique=True, sqlite_where=where, postgresql_where=where
        )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("instance", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("heartbeat_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("schema_revision", sa.String(32), nullable=False),
        sa.Column("code_version", sa.String(64), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=True),
        sa.Column("acquired_at", UtcDateTime(), nullable=True),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "submit_slots",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("granted_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_submit_slots_pool", "submit_slots", ["pool", "granted_at"])
    op.create_table(
        "output_names",
        sa.Column("name_key", sa.String(1024), primary_key=True),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("reserved_at", UtcDateTime(), nullable=False),
    )
    op.execute(
        "INSERT INTO output_names (name_key, owner, reserved_at) "
        "SELECT outputs.path_lower, items.path_lower, items.discovered_at "
        "FROM outputs JOIN items ON items.id = outputs.item_id "
        "WHERE outputs.id = (SELECT MIN(first.id) FROM outputs AS first "
        "WHERE first.path_lower = outputs.path_lower)"
    )


def downgrade() -> None:
    op.drop_table("output_names")
    op.drop_index("ix_submit_slots_pool", "submit_slots")
    op.drop_table("submit_slots")
    op.drop_table("leases")
    op.drop_table("nodes")
    for name in (
        "uq_items_processing_hash",
        "uq_items_processing_path",
        "ix_items_pending_id",
        "ix_items_move_claimed_by",
        "ix_items_claimed_by",
    ):
        op.drop_index(name, "items")
    with op.batch_alter_table("items") as batch:
        for column in (
            "move_lease_expires_at",
            "move_token",
            "move_claimed_by",
            "dedupe_key",
            "claim_token",
        ):
            batch.drop_column(column)
