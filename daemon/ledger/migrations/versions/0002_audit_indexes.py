"""Indexes for the audit commands at 1,000,000 revisions (see daemon/ledger/audit.py).

- ix_items_status_id: `ledger list --status` newest first; pending/processing counts.
- ix_items_outcome: `ledger stats`, per outcome and finish time: counts, first/last
  finish, the latency sample, failures by reason in a window.
- ix_items_path_ci: `ledger list --path GLOB` (prefix range) and `ledger show PATH`.
- ix_items_archived_path: `ledger show archive/...`, `retry failed/...`.
- ix_items_duplicates (partial: reason "duplicate of ..."): duplicates in a window, from the
  index alone (last_error itself is unbounded text, unfit for a PostgreSQL B-tree).
- ix_events_event_at: engine submissions (what Adobe bills) per window and period.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_status_id", "items", ["status", "id"])
    op.create_index("ix_items_outcome", "items", ["status", "finished_at"])
    op.create_index("ix_items_path_ci", "items", [sa.text("lower(path)")])
    op.create_index("ix_items_archived_path", "items", ["archived_path"])
    duplicate = sa.text("last_error LIKE 'duplicate of %'")
    op.create_index(
        "ix_items_duplicates",
        "items",
        ["finished_at"],
        sqlite_where=duplicate,
        postgresql_where=duplicate,
    )
    op.create_index("ix_events_event_at", "events", ["event", "at"])


def downgrade() -> None:
    op.drop_index("ix_events_event_at", table_name="events")
    op.drop_index("ix_items_duplicates", table_name="items")
    op.drop_index("ix_items_archived_path", table_name="items")
    op.drop_index("ix_items_path_ci", table_name="items")
    op.drop_index("ix_items_outcome", table_name="items")
    op.drop_index("ix_items_status_id", table_name="items")
