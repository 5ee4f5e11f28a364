"""security counters are 32-bit unsigned: BIGINT columns

MCUboot's security counter is a 32-bit unsigned number; PostgreSQL's INTEGER is
32-bit signed, so a release with a counter above 2,147,483,647 could not be
stored. ``devices.security_counter`` and ``releases.security_counter`` become
BIGINT. SQLite's INTEGER is 64-bit already, and copying ``devices`` (batch mode)
would trip the foreign keys that point at it: nothing to do there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = ("devices", "releases")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "security_counter", existing_type=sa.Integer(), type_=sa.BigInteger()
            )


def downgrade() -> None:
    # Counters above 2**31 - 1 do not fit back: the downgrade fails on them (as it should).
    if op.get_bind().dialect.name == "sqlite":
        return
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "security_counter", existing_type=sa.BigInteger(), type_=sa.Integer()
            )
