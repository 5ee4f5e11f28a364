"""evidence bundles per device: evidence_bundles

Every update a gateway's agent runs leaves an evidence bundle (report, audit record,
preflight values, configuration before and after, bus trace); the server keeps each
one, verified, per device, as that system's update record (docs/fleet.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "evidence_bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("gateway_id", sa.Integer(), nullable=True),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("uploaded_by", sa.String(length=120), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=120), nullable=False),
        sa.Column("running_version", sa.String(length=120), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"]),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["gateway_id"], ["gateways.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "sha256", name="uq_evidence_device_sha256"),
    )
    with op.batch_alter_table("evidence_bundles", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_evidence_bundles_device_id"), ["device_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("evidence_bundles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evidence_bundles_device_id"))
    op.drop_table("evidence_bundles")
