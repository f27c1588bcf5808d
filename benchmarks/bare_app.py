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
import threading
from collections.abc import Callable

from flask import Flask
from flask import request

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
    """A read on a connection per thread and process, opened on first use (the master
    answers a few requests before it forks: its connections stay its own)."""
    url = os.environ["IDENTITY_SQLALCHEMY_DATABASE_URI"]
    local = threading.local()
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        statement = READ.format("?")

        def read(address: str) -> object:
            if getattr(local, "pid", None) != os.getpid():
                local.conn, local.pid = sqlite3.connect(path), os.getpid()
            return local.conn.execute(statement, (address,)).fetchone()

        return read
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    statement = READ.format("%s")

    def read(address: str) -> object:
        if getattr(local, "pid", None) != os.getpid():
            local.conn, local.pid = psycopg.connect(dsn, autocommit=True), os.getpid()
        return local.conn.execute(statement, (address,), prepare=True).fetchone()

    return read
