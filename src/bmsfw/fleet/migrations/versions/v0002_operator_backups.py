"""operator backups: config_backups.gateway_id nullable, uploaded_by column

A technician's laptop (an operator token, no gateway) can now file a device's
configuration backup, so a backup no longer needs a gateway, and every backup
records which credential uploaded it. Backups stored before this revision were
all filed by gateways: they get that gateway's credential name (``gateway:NAME``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot ALTER a column's nullability in place (the table is
    # copied); on PostgreSQL the same block issues plain ALTER TABLE statements.
    with op.batch_alter_table("config_backups", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("uploaded_by", sa.String(length=120), nullable=False, server_default="")
        )
        batch_op.alter_column("gateway_id", existing_type=sa.Integer(), nullable=True)
    op.execute(
        "UPDATE config_backups SET uploaded_by = ("
        "SELECT 'gateway:' || gateways.name FROM gateways "
        "WHERE gateways.id = config_backups.gateway_id) "
        "WHERE gateway_id IS NOT NULL"
    )


def downgrade() -> None:
    # Operator backups have no gateway and cannot exist in the old schema: they are
    # dropped (take a database backup before downgrading).
    op.execute("DELETE FROM config_backups WHERE gateway_id IS NULL")
    with op.batch_alter_table("config_backups", schema=None) as batch_op:
        batch_op.alter_column("gateway_id", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("uploaded_by")
