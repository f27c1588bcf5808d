"""When a dependency cannot answer: which failures say so, and one warning per outage.

A database that refuses connections, a statement past its deadline, a full disk, a
Redis that does not answer: the request is fine, the service will be again, so the
client gets 503 with Retry-After (identity.api.errors) rather than a 500, and the log
gets one warning per dependency and process every `WARN_EVERY_SECONDS`, not a
traceback per request. Anything else (a constraint, a missing table, a bug) is no
outage and keeps the 500 path.
"""

import logging
import sys
import time

from prometheus_client import Counter
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger(__name__)

DATABASE = "database"
REDIS = "redis"
SMTP = "smtp"

UNAVAILABLE = Counter(
    "identity_dependency_unavailable_total",
    "Requests that met a dependency unable to answer",
    ["dependency"],
)

_NAMES = {DATABASE: "The database", REDIS: "Redis", SMTP: "The mail server"}

WARN_EVERY_SECONDS = 30.0

# SQLite's OperationalErrors that are a state of the disk or of other writers, not of
# the schema or the query ("no such table" stays a 500).
_SQLITE_OUTAGES = ("disk is full", "database is locked", "disk i/o error", "unable to open")


def unavailable_dependency(error: BaseException) -> str | None:
    """`DATABASE` or `REDIS` when `error` says that dependency cannot answer now."""
    if isinstance(error, PoolTimeout):
        return DATABASE
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return DATABASE
        if not isinstance(error, OperationalError | InterfaceError):
            return None
        if type(error.orig).__module__.startswith("sqlite3"):
            message = str(error.orig).lower()
            return DATABASE if any(text in message for text in _SQLITE_OUTAGES) else None
        return DATABASE  # psycopg: a connection, a timeout, the server shutting down
    redis = sys.modules.get("redis.exceptions")  # loaded where Redis is used at all
    if redis is not None and isinstance(error, redis.ConnectionError | redis.TimeoutError):
        return REDIS
    return None


_last_warning: dict[str, float] = {}


def report(
    dependency: str, error: BaseException | None = None, *, effect: str = "answering 503"
) -> None:
    """Count a request that met `dependency` unavailable, and `warn`."""
    UNAVAILABLE.labels(dependency).inc()
    warn(dependency, error, effect=effect)


def warn(dependency: str, error: BaseException | None = None, *, effect: str) -> None:
    """Warn that `dependency` is unavailable, once per `WARN_EVERY_SECONDS` at most.

    :param effect: what the service does meanwhile, for the operator reading the log.
    """
    now = time.monotonic()
    if now - _last_warning.get(dependency, -WARN_EVERY_SECONDS) < WARN_EVERY_SECONDS:
        return
    _last_warning[dependency] = now  # a race may warn twice: harmless
    cause = f" ({_describe(error)})" if error is not None else ""
    logger.warning(
        "%s is unavailable%s: %s while it lasts (next warning in %d s at most)",
        _NAMES.get(dependency, dependency),
        cause,
        effect,
        WARN_EVERY_SECONDS,
    )


def _describe(error: BaseException) -> str:
    """The driver's error type and first line: no statement, no parameter."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}"[:300]
