"""Single-row reads on the hottest paths, straight on a pooled DB-API connection.

/info, the token check of every authenticated request and /hash_details each need one
small read. Through SQLAlchemy's ORM session such a read costs more than the query
itself (docs/performance.md); here the statement is compiled once per dialect, its
parameters converted by their column types, and run on a connection from the pool.

These reads see committed data only (they are outside the request's session); each
value is converted by its column's type as the ORM would (aware datetimes on SQLite).

On a database server each read is one round trip: the connections come from a pool of
their own, in autocommit (no transaction to roll back when a connection returns), and
are not pinged before use (the ORM's pool pings each checkout: `pool_pre_ping`).
Instead, a read that finds its connection dropped (a restarted server, a terminated
backend) drops every pooled connection and runs once more on a new one, so the caller
never sees it. SQLite reads a file: its reads use the ORM's pool, which neither pings
nor pays a round trip to roll back.
"""

from dataclasses import dataclass
from typing import Any
from typing import cast

from flask import current_app
from sqlalchemy import Engine
from sqlalchemy import Select
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.engine import Compiled
from sqlalchemy.engine import Dialect

from identity.extensions import db


@dataclass(frozen=True)
class _Prepared:
    compiled: Compiled
    sql: str
    positions: tuple[str, ...] | None  # parameter order for positional paramstyles
    processors: dict[str, Any]  # bind name → the column type's conversion
    results: tuple[Any, ...] | None  # per selected column, its conversion (None: none)


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
        results = tuple(
            column.type._cached_result_processor(dialect, None)
            for column in statement.selected_columns
        )
        prepared = _prepared[key] = _Prepared(
            compiled, str(compiled), positions, processors, results if any(results) else None
        )
    return prepared


def _engine() -> Engine:
    """The app's engine for hot reads: its own on a server, the ORM's on SQLite."""
    engines = current_app.extensions.setdefault("identity.hot_reads", {})
    main = db.engine
    engine = engines.get(main)
    if engine is None:
        if main.dialect.name == "sqlite":
            engine = main
        else:
            engine = create_engine(
                main.url,
                isolation_level="AUTOCOMMIT",
                pool_pre_ping=False,
                pool_reset_on_return=None,
                hide_parameters=True,
            )
            # Closed with the ORM's (a test's app torn down, a forked worker's copy).
            event.listen(main, "engine_disposed", lambda _: engine.dispose())
        engines[main] = engine
    return engine


def fetch_one(statement: Select, **values: Any) -> tuple | None:
    """The first row of a module-level `statement` with bindparams named as `values`."""
    engine = _engine()
    prepared = _prepare(statement, engine.dialect)
    # Our values, and the statement's own (a LIMIT, say).
    values = cast(dict[str, Any], prepared.compiled.construct_params(values))
    for name, convert in prepared.processors.items():
        values[name] = convert(values[name])
    params: Any = values
    if prepared.positions is not None:
        params = tuple(values[name] for name in prepared.positions)
    for attempt in (1, 2):
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(prepared.sql, params)
            row = cursor.fetchone()
            if row is None or prepared.results is None:
                return row
            return tuple(
                value if convert is None else convert(value)
                for value, convert in zip(row, prepared.results, strict=True)
            )
        except engine.dialect.loaded_dbapi.Error as e:
            if attempt == 2 or not engine.dialect.is_disconnect(e, connection, None):
                raise
            # Dropped: so are, most likely, its pooled siblings (a server restart).
            connection.invalidate(e)
            engine.dispose(close=False)
        finally:
            connection.close()
    raise AssertionError("unreachable")
