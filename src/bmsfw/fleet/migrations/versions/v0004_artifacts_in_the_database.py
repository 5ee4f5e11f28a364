"""artifacts in the database: artifact_chunks

Release files move from each server process's local ``--artifacts`` directory into
the database (numbered chunks per SHA-256), so any server process on any host can
serve any release with only the database in common. Files of an older directory are
copied in by ``bmsfw fleet serve --artifacts DIR`` at start (see docs/fleet.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "artifact_chunks",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", "seq"),
    )


def downgrade() -> None:
    op.drop_table("artifact_chunks")
