"""The floors for bench_small_requests.py: one-route Flask apps answering `{}` to any path.

    gunicorn -c gunicorn.conf.py 'benchmarks.bare_app:create_app()'
    gunicorn -c gunicorn.conf.py 'benchmarks.bare_app:create_app(round_trips=True)'

With `round_trips`, the app first makes the calls our service cannot do without, the
plain way, with the same drivers and the same environment as ours: one Redis command
when the rate limits are in Redis (IDENTITY_RATELIMIT_STORAGE_URI), then, on every path
but the status one, one read of a binding (IDENTITY_SQLALCHEMY_DATABASE_URI, PostgreSQL
or SQLite). Set against it, ours shows what our own code costs beyond the round trips.
"""

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask import request

from identity.idle import IdleConnections

STATUS_PATH = "/_matrix/identity/v2"
READ = "SELECT mxid FROM association WHERE medium = 'email' AND address = {}"


def create_app(round_trips: bool = False) -> Flask:
    app = Flask(__name__)
    hit_limit = _redis_command() if round_trips else None
    read = _read() if round_trips else None

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    def anything(path: str) -> dict:
        if hit_limit is not None:
            hit_limit(request.remote_addr or "")
        if read is not None and request.path != STATUS_PATH:
            read(request.args.get("address", ""))
        return {}

    return app


def _redis_command() -> Callable[[str], object] | None:
    url = os.environ.get("IDENTITY_RATELIMIT_STORAGE_URI", "")
    if not url.startswith("redis"):
        return None
    import redis

    client = redis.Redis.from_url(url)  # a pool: one connection per thread in use
    return lambda address: client.execute_command("INCR", f"bare:{address}")


def _read() -> Callable[[str], object]:
    """A read on a connection kept idle between requests (one per thread reading at once,
    as ours keeps them: `identity.idle`), opened on first use in each process."""
    url = os.environ["IDENTITY_SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        statement = READ.format("?")
        idle = IdleConnections(lambda: sqlite3.connect(path, check_same_thread=False), _close)
        prepare: dict = {}
    else:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        statement = READ.format("%s")
        idle = IdleConnections(lambda: psycopg.connect(dsn, autocommit=True), _close)
        prepare = {"prepare": True}

    def read(address: str) -> object:
        connection = idle.take()
        row = connection.execute(statement, (address,), **prepare).fetchone()
        idle.give(connection)
        return row

    return read


def _close(connection: Any) -> None:
    connection.close()
