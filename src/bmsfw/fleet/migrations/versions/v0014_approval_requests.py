"""four eyes for every safety-relevant action: approval_requests

One row per action waiting for (or decided by) a second person: what runs once approved,
on what, who asked, until when, and who decided. A campaign already waiting for approval
(status needs_approval) gets its request here, asked by its creator, valid for a day
from the upgrade.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    table = op.create_table(
        "approval_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("min_role", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("requested_by", sa.String(length=120), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.String(length=120), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_approval_requests_status", "approval_requests", ["status"])
    op.create_index("ix_approval_requests_target", "approval_requests", ["target"])
    campaigns = sa.table(
        "campaigns",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("status", sa.String()),
        sa.column("created_at", sa.DateTime()),
        sa.column("created_by", sa.String()),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    waiting = op.get_bind().execute(
        sa.select(campaigns).where(campaigns.c.status == "needs_approval")
    )
    rows = [
        {
            "action": "campaign.start",
            "target": f"campaign:{c.id}",
            "params": {},
            "summary": f"start campaign {c.id} ({c.name})",
            "min_role": "operator",
            "status": "waiting",
            "requested_at": c.created_at,
            "requested_by": c.created_by,
            "requested_by_id": None,
            "expires_at": now + timedelta(days=1),
            "decided_at": None,
            "decided_by": "",
            "note": "",
        }
        for c in waiting
    ]
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_index("ix_approval_requests_target", table_name="approval_requests")
    op.drop_index("ix_approval_requests_status", table_name="approval_requests")
    op.drop_table("approval_requests")
