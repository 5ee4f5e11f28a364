"""Database engines and schema migration for the fleet server.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every
transaction starts with ``BEGIN IMMEDIATE``: the write lock is taken up front,
so two server processes serialise instead of failing half way with
"database is locked" on lock upgrade. PostgreSQL (for scale) uses row locks
(``SELECT ... FOR UPDATE``) where campaign state changes.

Migrations (Alembic, in ``migrations/``) are applied by :func:`upgrade_database`,
which ``bmsfw fleet serve`` and ``bmsfw fleet init`` call on start. On PostgreSQL
an advisory lock keeps two processes starting at once from migrating twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bmsfw.fleet.errors import MigrationError

__all__ = [
    "MIGRATIONS_DIR",
    "head_revision",
    "is_postgres",
    "make_engine",
    "make_session_factory",
    "read_only_engine",
    "schema_revision",
    "upgrade_database",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK_KEY = 0x626D7366  # "bmsf": any constant shared by all server processes
_READ_ONLY_OPTION = "bmsfw_read_only"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(url: str, *, busy_timeout_s: float = 30.0, pool_size: int = 10) -> Engine:
    """An engine for ``url`` (``sqlite:///fleet.db`` or ``postgresql+psycopg://...``)."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError and ValueError alike
        raise MigrationError(f"cannot parse database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # One in-memory database per connection would lose data between requests.
            raise MigrationError("the fleet server needs a file database, e.g. sqlite:///fleet.db")
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _configure_sqlite(engine, busy_timeout_s)
        return engine
    # A fixed pool, no overflow: a connection opened and closed per request under
    # load costs PostgreSQL a backend fork each time (it was most of the CPU of a
    # check-in at 1,000 devices). Requests beyond the pool wait for a connection.
    # No pre-ping (a round trip per checkout): after a database restart SQLAlchemy
    # sees the disconnect, drops the pool, and that one request fails (the agent
    # retries at its next poll).
    return create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own
        # implicit BEGIN is deferred and would upgrade locks mid-transaction).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A connection marked read-only (see read_only_engine) reads a WAL snapshot
        # without the write lock; everything else takes the lock up front.
        if connection.get_execution_options().get(_READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def read_only_engine(engine: Engine) -> Engine:
    """A view of ``engine`` for single-statement reads that write nothing.

    PostgreSQL: autocommit (no BEGIN/ROLLBACK round trips). SQLite: a deferred
    ``BEGIN`` instead of ``BEGIN IMMEDIATE``, so the read does not queue behind
    (or block) writers of other processes.
    """
    if is_postgres(engine):
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine.execution_options(**{_READ_ONLY_OPTION: True})


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; safe from several processes)."""
    from alembic import command

    cfg = _alembic_config()
    try:
        with engine.begin() as connection:
            if is_postgres(engine):
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise MigrationError(f"migrating {engine.url.render_as_string()} failed: {exc}") from exc
    log.info("fleet database at revision %s", schema_revision(engine))


def head_revision() -> str | None:
    """The revision this code's migrations end at (read from the migration scripts)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
