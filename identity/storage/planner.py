"""Statistics for the query planner after a bulk load.

PostgreSQL and SQLite choose their plans from statistics, which PostgreSQL's autovacuum
gathers some time after a table changes and SQLite only when asked. On a table just
filled by an import PostgreSQL has none: a v2 lookup's `lookup_hash IN (…)` then reads
the whole table (53 ms instead of 2.7 at 100,000 bindings, docs/performance.md).
"""

from sqlalchemy import text

from identity.extensions import Model
from identity.extensions import db


def analyze(*models: type[Model]) -> None:
    """Gather the planner's statistics on the tables of `models`, and commit."""
    for model in models:
        # Table names come from our models, never from input.
        db.session.execute(text(f'ANALYZE "{model.__tablename__}"'))
    db.session.commit()
