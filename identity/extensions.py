"""Flask extensions, created unbound and bound to the app in `create_app`."""

import logging
from typing import TYPE_CHECKING

from flask import Flask
from flask_babel import Babel
from flask_mail import Mail
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    # Same constraint names on SQLite and PostgreSQL, so migrations can alter them.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


db = SQLAlchemy(model_class=Base)

# The models' base class. Flask-SQLAlchemy builds db.Model from Base at run time, which
# type checkers cannot follow: they see Base, whose typed mappings it keeps.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
mail = Mail()
babel = Babel()


def init_migrations(app: Flask, directory: str) -> None:
    """Bind Flask-Migrate (Alembic) to `app`, for `flask db …` and AUTO_MIGRATE.

    Imported here, not at the top: a process that only serves never migrates, and
    Alembic with its templates is about 9 MiB of memory (docs/performance.md).
    """
    # Alembic logs each of its plugins at INFO while it is first imported, which is now
    # after the logs are set up: not a line of it.
    alembic = logging.getLogger("alembic")
    level = alembic.level
    alembic.setLevel(logging.WARNING)
    try:
        from flask_migrate import Migrate
    finally:
        alembic.setLevel(level)
    Migrate(app, db, directory=directory, render_as_batch=True)
