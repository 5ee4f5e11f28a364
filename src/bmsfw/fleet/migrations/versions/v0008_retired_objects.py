"""retired objects: releases.deactivated_at/_by, gateways.decommissioned_at,
devices.decommissioned_at

A pulled release stays (its campaigns' history names it) but no campaign may use it;
a decommissioned gateway or device stays with its history, its gateway credential
revoked, and takes part in no new campaign. NULL: in service.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deactivated_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("deactivated_by", sa.String(length=120), nullable=False, server_default="")
        )
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decommissioned_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decommissioned_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("decommissioned_at")
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_column("decommissioned_at")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("deactivated_by")
        batch_op.drop_column("deactivated_at")
