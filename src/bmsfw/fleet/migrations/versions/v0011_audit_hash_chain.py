"""audit log hash chain: audit_log.chain_seq, audit_log.chain_hash

Entries are sealed into a hash chain after they are written (bmsfw.fleet.audit_chain);
existing entries are sealed by the first tick after the upgrade.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chain_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("chain_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_audit_log_chain_seq", ["chain_seq"])


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_constraint("uq_audit_log_chain_seq", type_="unique")
        batch_op.drop_column("chain_hash")
        batch_op.drop_column("chain_seq")
