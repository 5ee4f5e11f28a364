"""Alembic environment for the fleet database.

Run only through :func:`bmsfw.fleet.db.upgrade_database`, which hands over an
open connection in ``config.attributes["connection"]`` (no alembic.ini needed).
"""

from __future__ import annotations

from alembic import context

from bmsfw.fleet.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run fleet migrations through bmsfw.fleet.db.upgrade_database()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
