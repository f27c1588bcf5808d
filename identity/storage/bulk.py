"""Bulk loads into an empty table on PostgreSQL: its indexes built once, after the rows.

Rows loaded into an indexed table update every index row by row: at 10,000,000
bindings that halved the load rate, and left indexes half as large again as ones built
in one pass (docs/performance.md). Built after the load, in the load's transaction, with
the table emptied by TRUNCATE (a new file): a load killed or failed half-way is rolled
back whole, and PostgreSQL drops the files it was writing, heap and indexes, instead of
leaving their pages behind for VACUUM.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy import text

# Per transaction: an index build sorts in memory up to this, then on disk.
_BUILD_MEMORY = "256MB"


@contextmanager
def indexes_after_load(connection: Connection, table: str) -> Iterator[bool]:
    """Within `connection`'s transaction, drop `table`'s secondary indexes and unique
    constraints if the table is empty, let the caller load it, then build them again
    as they were. Yields whether it did (only on PostgreSQL, only for an empty table);
    otherwise the indexes stay and the rows go through them.

    The table is locked until the transaction ends: writes to it wait for the load.
    On an exception the indexes are not built: the caller rolls the transaction back,
    which brings them back as they were.
    """
    if connection.dialect.name != "postgresql":
        yield False
        return
    # Table names come from our models, never from input.
    connection.execute(text(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE'))
    if connection.execute(text(f'SELECT EXISTS (SELECT FROM "{table}")')).scalar():  # noqa: S608
        yield False
        return
    owned = {"table": table}
    constraints = connection.execute(
        text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = CAST(:table AS regclass) AND contype = 'u' ORDER BY conname"
        ),
        owned,
    ).all()
    indexes = connection.execute(
        text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = CAST(:table AS regclass) AND NOT i.indisprimary"
            " AND NOT EXISTS (SELECT FROM pg_constraint WHERE conindid = i.indexrelid)"
            " ORDER BY c.relname"
        ),
        owned,
    ).all()
    for name, _ in constraints:
        connection.execute(text(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"'))
    for name, _ in indexes:
        connection.execute(text(f'DROP INDEX "{name}"'))
    # A new, empty file for the rows (and for the primary key's index).
    connection.execute(text(f'TRUNCATE "{table}"'))
    yield True
    connection.execute(text(f"SET LOCAL maintenance_work_mem = '{_BUILD_MEMORY}'"))
    # As the server wrote them (no bound parameters: their `::` casts stay as they are).
    for name, definition in constraints:
        connection.exec_driver_sql(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}')
    for _, definition in indexes:
        connection.exec_driver_sql(definition)
