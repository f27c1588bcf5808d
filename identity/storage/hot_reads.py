"""Single-row reads on the hottest paths, straight on a pooled DB-API connection.

/info, the token check of every authenticated request and /hash_details each need one
small read. Through SQLAlchemy's ORM session such a read costs more than the query
itself (docs/performance.md); here the statement is compiled once per dialect, its
parameters converted by their column types, and run on a connection from the pool.

These reads see committed data only (they are outside the request's session), and
return raw column values: use them for strings, numbers and booleans.
"""

from dataclasses import dataclass
from typing import Any
from typing import cast

from sqlalchemy import Select
from sqlalchemy.engine import Compiled
from sqlalchemy.engine import Dialect

from identity.extensions import db


@dataclass(frozen=True)
class _Prepared:
    compiled: Compiled
    sql: str
    positions: tuple[str, ...] | None  # parameter order for positional paramstyles
    processors: dict[str, Any]  # bind name → the column type's conversion


_prepared: dict[tuple[int, str], _Prepared] = {}


def _prepare(statement: Select, dialect: Dialect) -> _Prepared:
    key = (id(statement), dialect.name)
    prepared = _prepared.get(key)
    if prepared is None:
        compiled = statement.compile(dialect=dialect)
        processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.bind_processor(dialect)) is not None
        }
        positions = tuple(compiled.positiontup) if compiled.positiontup else None
        prepared = _prepared[key] = _Prepared(compiled, str(compiled), positions, processors)
    return prepared


def fetch_one(statement: Select, **values: Any) -> tuple | None:
    """The first row of a module-level `statement` with bindparams named as `values`."""
    engine = db.engine
    prepared = _prepare(statement, engine.dialect)
    # Our values, and the statement's own (a LIMIT, say).
    values = cast(dict[str, Any], prepared.compiled.construct_params(values))
    for name, convert in prepared.processors.items():
        values[name] = convert(values[name])
    params: Any = values
    if prepared.positions is not None:
        params = tuple(values[name] for name in prepared.positions)
    connection = engine.raw_connection()  # from the pool, rolled back when returned
    try:
        cursor = connection.cursor()
        cursor.execute(prepared.sql, params)
        return cursor.fetchone()
    finally:
        connection.close()
