"""Hot reads on PostgreSQL through psycopg's libpq layer (`storage.hot_reads`).

Imported only where the database is PostgreSQL: SQLite deployments never load psycopg.
"""

from typing import Any

import psycopg
from psycopg import errors
from psycopg import pq
from psycopg.adapt import PyFormat
from psycopg.adapt import Transformer
from psycopg.generators import execute

from identity.storage.prepared import Prepared


class LibpqReader:
    """Reads through psycopg's libpq layer (`psycopg.pq`): each statement prepared once
    on the server, parameters and rows converted by psycopg's own dumpers and loaders.
    A cursor's Python layers around the same calls cost about 45 µs of CPU a read here
    (docs/performance.md). libpq releases the GIL while it waits, as a cursor does."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.transformer = Transformer(connection)
        self.prepared: set[bytes] = set()

    def fetch_one(self, prepared: Prepared, params: Any) -> tuple | None:
        rows = self.fetch(prepared, params, 1)
        return rows[0] if rows else None

    def fetch_all(self, prepared: Prepared, params: Any) -> list[tuple]:
        return self.fetch(prepared, params, None)

    def fetch(self, prepared: Prepared, params: Any, limit: int | None) -> list[tuple]:
        """The rows of one execution of `prepared`, the first `limit` of them if given."""
        if prepared.name not in self.prepared:
            self.prepare(prepared.name, prepared.sql.encode())
        values = self.transformer.dump_sequence(params, [PyFormat.TEXT] * len(params))
        try:
            result = self.execute(prepared.name, values)
        except psycopg.errors.InvalidSqlStatementName:
            # The server forgot it (`DEALLOCATE ALL`, a pooler's `DISCARD ALL`): again.
            self.prepare(prepared.name, prepared.sql.encode())
            result = self.execute(prepared.name, values)
        if not result.ntuples:
            return []
        self.transformer.set_pgresult(result)
        count = result.ntuples if limit is None else min(limit, result.ntuples)
        return self.transformer.load_rows(0, count, tuple)

    # Each a round trip to the server, waited for as psycopg waits (within the
    # connection's deadline, storage.timeouts), not in libpq's blocking calls.

    def prepare(self, name: bytes, sql: bytes) -> None:
        self.connection.pgconn.send_prepare(name, sql)
        self._check(self._result())
        self.prepared.add(name)

    def execute(self, name: bytes, values: Any) -> Any:
        self.connection.pgconn.send_query_prepared(name, values)
        return self._check(self._result())

    def _result(self) -> Any:
        return self.connection.wait(execute(self.connection.pgconn))[-1]

    def _check(self, result: Any) -> Any:
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise psycopg.errors.error_from_result(result, encoding=self.connection.info.encoding)
        return result


class NoAnswer(psycopg.OperationalError):
    """The server did not answer within the connection's deadline."""


class DeadlineConnection(psycopg.Connection):
    """A psycopg connection whose every wait on the server ends after `deadline`."""

    deadline: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        try:
            return super().wait(gen, interval, timeout if timeout is not None else self.deadline)
        except errors._WaitTimeout:  # psycopg's own: no answer within the time given
            # Mid-statement, the connection's state is unknown: it is not used again.
            self.close()
            raise NoAnswer(f"the database did not answer within {self.deadline:g} s") from None
