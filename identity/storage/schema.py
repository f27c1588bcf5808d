"""Whether the database's schema is the code's: read without Alembic.

Serving processes never import Alembic (docs/performance.md, memory): the revisions
the code knows are read from the migration files' `revision = "…"` lines once, and the
database's from Alembic's own table.
"""

import os
import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from identity.extensions import db

_REVISION = re.compile(r"""^revision\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.MULTILINE)
_DOWN = re.compile(r"""^down_revision\s*(?::[^=]*)?=\s*["']([^"']+)["']""", re.MULTILINE)

CURRENT = "current"
BEHIND = "behind"  # a migration of the code has not run (or none has)
AHEAD = "ahead"  # the database was migrated by a newer version of the code


@dataclass(frozen=True)
class Revisions:
    """The migrations the code ships: every revision, and the latest ones (heads)."""

    known: frozenset[str]
    heads: frozenset[str]

    @classmethod
    def of_directory(cls, directory: str) -> "Revisions":
        known, parents = set(), set()
        versions = os.path.join(directory, "versions")
        for name in sorted(os.listdir(versions)):
            if name.endswith(".py"):
                with open(os.path.join(versions, name), encoding="utf-8") as f:
                    source = f.read()
                known.update(_REVISION.findall(source))
                parents.update(_DOWN.findall(source))
        return cls(frozenset(known), frozenset(known - parents))

    def state_of(self, applied: set[str]) -> str:
        """CURRENT, BEHIND or AHEAD for a database at the `applied` revisions."""
        if applied == self.heads:
            return CURRENT
        return AHEAD if applied - self.known else BEHIND


def applied_revisions() -> set[str]:
    """The revisions the database is at (none before the first migration).

    :raises DBAPIError: the database cannot answer.
    """
    try:
        rows = db.session.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError as e:
        db.session.rollback()
        if _is_missing_table(e):
            return set()
        raise
    return {row[0] for row in rows}


def _is_missing_table(error: DBAPIError) -> bool:
    message = str(error.orig).lower()
    return "no such table" in message or "does not exist" in message
