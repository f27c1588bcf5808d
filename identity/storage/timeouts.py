"""Time limits on the database, so that a request meets an outage in bounded time.

Without them a request waits on a PostgreSQL that is stopped (a connection attempt),
busy (a pool with no connection free) or frozen (a statement the server never
answers) until gunicorn kills the worker. With them it fails fast, and the failure
becomes a 503 (identity.outages).

A statement has two limits: the server's `statement_timeout`, which ends a slow
query cleanly, and a client-side deadline a second later, which also covers a server
that answers nothing at all (paused, or its host gone): psycopg waits on the socket
for at most that long, then the connection is closed and the statement fails.
Commands (migrations, imports) have no statement limit: an operator watches them.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import event

# The key of connect_args that carries the client-side deadline to `_connect`.
_DEADLINE = "identity_deadline_seconds"
# The client gives the server this long beyond statement_timeout to cancel first.
_DEADLINE_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class DatabaseTimeouts:
    """Seconds; 0 means no limit."""

    connect: float
    statement: float  # 0 for commands
    pool: float

    @classmethod
    def from_config(cls, config: Any, *, serving: bool) -> "DatabaseTimeouts":
        statement = config["DATABASE_STATEMENT_TIMEOUT_SECONDS"] if serving else 0
        return cls(
            connect=config["DATABASE_CONNECT_TIMEOUT_SECONDS"],
            statement=statement,
            pool=config["DATABASE_POOL_TIMEOUT_SECONDS"],
        )

    def engine_options(self, url: str, options: dict[str, Any]) -> dict[str, Any]:
        """SQLAlchemy engine `options` with these limits, for the database at `url`
        (PostgreSQL only: an SQLite file has no connection to wait on)."""
        if not url.startswith("postgresql"):
            return options
        options = dict(options)
        if self.pool:
            options["pool_timeout"] = self.pool
        connect_args = dict(options.get("connect_args", {}))
        if self.connect:
            # libpq counts whole seconds, and takes less than 2 as 2.
            connect_args["connect_timeout"] = max(2, round(self.connect))
        if self.statement:
            milliseconds = round(self.statement * 1000)
            server = f"-c statement_timeout={milliseconds}"
            given = connect_args.get("options")
            connect_args["options"] = f"{given} {server}" if given else server
            connect_args[_DEADLINE] = self.statement + _DEADLINE_MARGIN_SECONDS
        options["connect_args"] = connect_args
        return options


@event.listens_for(Engine, "do_connect")
def _connect(dialect: Any, record: Any, cargs: tuple, cparams: dict[str, Any]) -> Any:
    """Connect with a `DeadlineConnection` where `engine_options` set a deadline."""
    deadline = cparams.pop(_DEADLINE, None)
    if deadline is None:
        return None  # SQLAlchemy connects as usual
    from identity.storage.libpq import DeadlineConnection  # PostgreSQL deployments only

    connection = DeadlineConnection.connect(*cargs, **cparams)
    connection.deadline = deadline
    return connection
