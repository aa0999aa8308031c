"""The outputs table: every output file of every input revision (profiles with several
`[[profile.output]]`), its slot in the profile, the spec it was rendered from (dedupe reuses
only equal outputs), its size and when it was written. Each existing `items.output_path` is
copied in as slot 0 with no spec; its name key is folded to lower case where the input's
own key is (Dropbox), exact where it is not (a case-sensitive local folder).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from daemon.ledger.schema import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outputs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("items.id"), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("path_lower", sa.Text(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("written_at", UtcDateTime(), nullable=True),
    )
    op.create_index("uq_outputs_item_slot", "outputs", ["item_id", "slot"], unique=True)
    op.create_index("ix_outputs_path_lower", "outputs", ["path_lower"])
    op.execute(
        "INSERT INTO outputs (item_id, slot, path, path_lower, written_at) "
        "SELECT id, 0, output_path, CASE WHEN path_lower = path THEN output_path "
        "ELSE lower(output_path) END, finished_at FROM items "
        "WHERE output_path IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_outputs_path_lower", table_name="outputs")
    op.drop_index("uq_outputs_item_slot", table_name="outputs")
    op.drop_table("outputs")
