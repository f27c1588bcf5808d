"""The database's own health."""

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from identity.extensions import db


def database_reachable() -> bool:
    """Whether the database answers a trivial query."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True
