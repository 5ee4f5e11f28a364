"""update reports sent with state reports: update_reports

An agent sends the parts of its update report (steps, preflight checks with value and
limit, the error) with the state report that ends or pauses a run; the server keeps the
latest per campaign device, typed, for the device page and `bmsfw fleet device` (also
where no evidence bundle was filed).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "update_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_device_id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("failed_step", sa.String(length=64), nullable=False),
        sa.Column("error_code", sa.String(length=16), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("running_version", sa.String(length=64), nullable=False),
        sa.Column("package_version", sa.String(length=64), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("preflight", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_device_id"], ["campaign_devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_device_id"),
    )


def downgrade() -> None:
    op.drop_table("update_reports")
