"""AUTO_MIGRATE: bring the schema up to date at start, once, whoever starts at the same time.

Several processes may start together: gunicorn's workers, several hosts on one
PostgreSQL, a `flask db upgrade` beside a starting server. Each takes a lock first (a
PostgreSQL advisory lock, or a lock file beside the SQLite database), then looks at
the revision the database is at: the first one migrates, the others find the schema
current and do nothing, not even start Alembic (whose context lines would otherwise
open every command's output).
"""

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator

from flask import Flask
from sqlalchemy import Connection
from sqlalchemy import Engine
from sqlalchemy import inspect
from sqlalchemy import text

from identity.extensions import db
from identity.extensions import init_migrations

logger = logging.getLogger(__name__)

# Any fixed number: the key of the advisory lock every instance takes to migrate.
_ADVISORY_LOCK_KEY = 0x1D_5C_4E_3A


def upgrade_schema(app: Flask, directory: str) -> bool:
    """Migrate the database to the latest revision unless it is there; return whether
    a migration ran.

    Alembic is imported here, by the processes that migrate only (extensions.py).
    """
    if "migrate" not in app.extensions:  # a server's app: Flask-Migrate left out
        init_migrations(app, directory)
    from alembic.script import ScriptDirectory  # imported by init_migrations
    from flask_migrate import upgrade

    with app.app_context():
        engine = db.engine
        config = app.extensions["migrate"].migrate.get_config(directory)
        heads = set(ScriptDirectory.from_config(config).get_heads())
        with _migration_lock(engine):
            if _current_revisions(engine) == heads:
                return False
            logger.info("Migrating the database schema to %s", ", ".join(sorted(heads)))
            upgrade(directory=directory)
            return True


def _current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return set()
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        return {row[0] for row in rows}


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection, _advisory_lock(connection):
            yield
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield  # one process owns it (an in-memory database)
        return
    with open(os.path.abspath(database) + ".migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(connection: Connection) -> Iterator[None]:
    # Session-level: held across the migration's own transactions, on its own connection.
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    connection.commit()
    try:
        yield
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        connection.commit()
