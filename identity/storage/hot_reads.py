"""Reads on the hottest paths, straight on a pooled DB-API connection.

/info, the token check of every authenticated request and /hash_details each need one
small read, a v2 lookup one statement for all its hashes. Through SQLAlchemy's ORM
session such a read costs more than the query itself (docs/performance.md), and a
transaction's BEGIN and ROLLBACK round trips besides; here the statement is compiled
once per dialect, its parameters converted by their column types, and run on a
connection from the pool.

These reads see committed data only (they are outside the request's session); each
value is converted by its column's type as the ORM would (aware datetimes on SQLite).

On a database server each read is one round trip: the connections are the reads' own
(`identity.idle`), in autocommit (no transaction to roll back after a read), and are
not pinged before use (the ORM's pool pings each checkout: `pool_pre_ping`). Instead,
a read that finds its connection dropped (a restarted server, a terminated backend)
closes every idle connection and runs once more on a new one, so the caller never
sees it. On SQLite the connections are made by the ORM's engine.
"""

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from operator import itemgetter
from typing import Any
from typing import Protocol

from flask import current_app
from sqlalchemy import CompoundSelect
from sqlalchemy import Engine
from sqlalchemy import Select
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import StatementError
from sqlalchemy.sql.compiler import SQLCompiler

from identity.extensions import db
from identity.idle import IdleConnections
from identity.storage.prepared import Prepared

_NAMES = itertools.count()  # unique even when two threads compile at once


def _prepare(statement: Select | CompoundSelect, reads: "_Reads") -> Prepared:
    dialect = reads.dialect
    compiled = statement.compile(dialect=dialect)
    results = tuple(
        (position, processor)
        for position, column in enumerate(statement.selected_columns)
        if (processor := column.type._cached_result_processor(dialect, None)) is not None
    )
    prepared = reads.prepared[statement] = Prepared(
        str(compiled),
        _arrangement(compiled, dialect),
        results or None,
        f"identity_hot_read_{next(_NAMES)}".encode(),
    )
    return prepared


def _arrangement(compiled: SQLCompiler, dialect: Dialect) -> Callable[[dict[str, Any]], Any]:
    """What `Compiled.construct_params` and an execution do to the values, as one call."""
    defaults = {name: bind.effective_value for name, bind in compiled.binds.items()
                if not bind.required}  # fmt: skip
    processors = {
        name: processor
        for name, bind in compiled.binds.items()
        # The dialect's own form of each type, as a compiled statement's execution uses
        # (a datetime on SQLite: the text SQLAlchemy stores, not sqlite3's).
        if (processor := bind.type._cached_bind_processor(dialect)) is not None
    }
    positions = tuple(compiled.positiontup or ()) if compiled.positional else None
    if not processors and positions:
        # The common case, in C: itemgetter of one name gives the value, not a tuple.
        pick = itemgetter(*positions)
        arranged = pick if len(positions) > 1 else lambda values: (pick(values),)
        if not defaults:
            return arranged
        return lambda values: arranged({**defaults, **values})

    def arrange(values: dict[str, Any]) -> Any:
        values = {**defaults, **values}
        for name, convert in processors.items():
            values[name] = convert(values[name])
        return values if positions is None else tuple([values[name] for name in positions])

    return arrange


_EXTENSION = "identity.hot_reads"


def _reads() -> "_Reads":
    """The app's hot-read connections: to a server, autocommit and unpinged; to SQLite,
    as the ORM's engine makes them. Each is made by an engine (its connect events
    apply) and detached from the engine's pool: `IdleConnections` keeps them."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # resolved once
    reads = app.extensions.get(_EXTENSION)
    if reads is None:
        main = db.engine
        engine = main
        if main.dialect.name != "sqlite":
            # The ORM engine's connect arguments: its time limits (storage.timeouts).
            connect_args = app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("connect_args", {})
            engine = create_engine(
                main.url,
                isolation_level="AUTOCOMMIT",
                pool_pre_ping=False,
                hide_parameters=True,
                connect_args=connect_args,
            )
        dialect = engine.dialect
        reader: Callable[[Any], _Reader] = _CursorReader
        final: tuple[type[Exception], ...] = ()
        if dialect.driver == "psycopg":
            from identity.storage.libpq import LibpqReader  # PostgreSQL deployments only
            from identity.storage.libpq import NoAnswer

            final = (NoAnswer,)

            # libpq's numbered parameters ($1), each statement prepared once per connection.
            dialect = copy.copy(dialect)
            dialect.paramstyle, dialect.positional = "numeric_dollar", True
            reader = LibpqReader
        reads = app.extensions[_EXTENSION] = _Reads(
            dialect, IdleConnections(partial(_detached, engine, reader), _close), final
        )
        # Closed with the ORM's (a test's app torn down, say).
        event.listen(main, "engine_disposed", lambda _: reads.idle.close_all())
    return reads


class _Reader(Protocol):
    connection: Any  # the DB-API connection

    def fetch_one(self, prepared: Prepared, params: Any) -> tuple | None: ...

    def fetch_all(self, prepared: Prepared, params: Any) -> list[tuple]: ...


@dataclass(frozen=True)
class _Reads:
    dialect: Dialect
    idle: IdleConnections[_Reader]
    # Failures not worth a second try: the server did not answer within the deadline.
    final: tuple[type[Exception], ...]
    # {module-level statement: its compiled form}, compiled on first use.
    prepared: dict[Select | CompoundSelect, Prepared] = field(default_factory=dict)


class _CursorReader:
    """Reads through the driver's DB-API connection (SQLite), with sqlite3's `execute`
    shortcut: its cursor is released as soon as the rows are read."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def fetch_one(self, prepared: Prepared, params: Any) -> tuple | None:
        return self.connection.execute(prepared.sql, params).fetchone()

    def fetch_all(self, prepared: Prepared, params: Any) -> list[tuple]:
        return self.connection.execute(prepared.sql, params).fetchall()


def _detached(engine: Engine, reader: Callable[[Any], _Reader]) -> _Reader:
    fairy = engine.raw_connection()
    fairy.detach()
    return reader(fairy.dbapi_connection)


def _close(reader: _Reader) -> None:
    reader.connection.close()


def fetch_one(statement: Select | CompoundSelect, **values: Any) -> tuple | None:
    """The first row of a module-level `statement` with bindparams named as `values`."""
    prepared, row = _run(statement, values, one=True)
    if row is None or prepared.results is None:
        return row
    # The same rows come back again and again (a homeserver looks the same addresses up
    # on every invite), and converting a date costs more than finding its row again.
    memo = prepared.converted
    try:
        converted = memo.get(row)
    except TypeError:  # a value that cannot be a key (a list, say)
        return _converted(row, prepared.results)
    if converted is None:
        if len(memo) >= _REMEMBERED_ROWS:
            memo.clear()
        converted = memo[row] = _converted(row, prepared.results)
    return converted


_REMEMBERED_ROWS = 1024  # per statement: rows read on a few hot paths


def fetch_all(statement: Select | CompoundSelect, **values: Any) -> list[tuple]:
    """Every row of a module-level `statement` with bindparams named as `values`."""
    prepared, rows = _run(statement, values, one=False)
    if prepared.results is None:
        return rows
    return [_converted(row, prepared.results) for row in rows]


def _run(statement: Select | CompoundSelect, values: dict[str, Any], *, one: bool) -> Any:
    """(the prepared statement, its first row or None if `one`, else its rows)."""
    reads = _reads()
    dialect = reads.dialect
    prepared = reads.prepared.get(statement) or _prepare(statement, reads)
    params = prepared.arrange(values)
    for attempt in (1, 2):
        connection = None
        try:
            connection = reads.idle.take()
            found: Any = (connection.fetch_one if one else connection.fetch_all)(prepared, params)
        except dialect.loaded_dbapi.Error as e:
            if connection is None:  # could not connect
                raise _as_orm_raises(e, prepared.sql, dialect) from e
            # Asked before it is closed: a closed connection always looks dropped.
            dropped = not isinstance(e, reads.final) and dialect.is_disconnect(
                e, connection.connection, None
            )
            reads.idle.discard(connection)
            if attempt == 2 or not dropped:
                raise _as_orm_raises(e, prepared.sql, dialect) from e
            # Dropped: so are, most likely, its idle siblings (a server restart).
            reads.idle.close_all()
            continue
        reads.idle.give(connection)
        return prepared, found
    raise AssertionError("unreachable")


def _converted(row: tuple, results: tuple[tuple[int, Any], ...]) -> tuple:
    values = list(row)
    for position, convert in results:
        if (value := values[position]) is not None:  # NULL is None whatever the type
            values[position] = convert(value)
    return tuple(values)


def _as_orm_raises(error: Exception, sql: str, dialect: Dialect) -> StatementError:
    """The driver's error wrapped as the ORM wraps it: one type of database failure for
    every caller (the parameters left out, as everywhere)."""
    return DBAPIError.instance(sql, None, error, dialect.loaded_dbapi.Error,
                               hide_parameters=True, dialect=dialect)  # fmt: skip
