"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every value can be overridden on the command line or with GUNICORN_CMD_ARGS. Workers
are stateless: rate limits (Redis), the delivery queue and everything else shared live
in PostgreSQL and Redis, so any number of workers and hosts answer alike.
"""

import contextlib
import ctypes
import gc
import glob
import multiprocessing
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import typing

bind = os.environ.get("IDENTITY_BIND", "0.0.0.0:8090")

# Threads overlap the waits on PostgreSQL, SMTP and homeservers; processes use the
# cores. See docs/performance.md for the measurements behind these defaults.
# gthread, except that a thread is given to a request once its head has arrived: slow
# or idle clients wait in the worker's main loop, not in its threads (identity/http_worker.py).
worker_class = "identity.http_worker.HeadFirstWorker"
workers = int(os.environ.get("IDENTITY_WORKERS", multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("IDENTITY_THREADS", 4))

# Graceful restarts: SIGHUP reloads the code and configuration (`on_reload`) and
# replaces the workers; a worker finishes its requests for up to graceful_timeout seconds.
graceful_timeout = 30
timeout = 60
keepalive = 5
# Recycle workers now and then, so that no slow leak can build up: rarely, since a
# worker's start costs CPU that a busy server takes from requests (10,000 recycled each
# worker every few seconds at full load, 10-20% of all CPU: docs/performance.md). The
# master holds the app already (`_load`): a new worker forks with it, builds nothing.
max_requests = 1_000_000
max_requests_jitter = 100_000
# gunicorn >= 25.1 opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl):
# several instances on one host would take it from each other. We manage instances
# with signals (docs/operations.md), so none is opened.
control_socket_disable = True

# One log format for every line (identity.logs.GunicornLogger): gunicorn's own, the
# access log's and the application's are JSON objects with the same fields and time
# format (or text lines, LOG_FORMAT), scrubbed of addresses, query strings and
# landing-page tokens. The access log's fields: remote, request (the route, its query
# string cut), status, bytes, duration_ms, request_id, and pid, the worker.
logger_class = "identity.logs.GunicornLogger"
accesslog = "-"
errorlog = "-"

# Behind a reverse proxy, set TRUSTED_PROXY_COUNT in the service's configuration (the
# app applies Werkzeug's ProxyFix); gunicorn itself needs the proxy's address here.
forwarded_allow_ips = os.environ.get("IDENTITY_FORWARDED_ALLOW_IPS", "127.0.0.1")

# Optional TLS, when no proxy terminates it.
certfile = os.environ.get("IDENTITY_TLS_CERT") or None
keyfile = os.environ.get("IDENTITY_TLS_KEY") or None

# Prometheus: every worker writes its counters to a shared directory, which /metrics
# adds up; a fresh directory per master, removed when it stops.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


# Start and reload: a child checks the configuration, migrates and creates the signing
# key (`_prepare`); the master then builds the app and answers a few requests itself
# (`_load`, `_warm_up`), and every worker forks with all of it in pages they share
# (docs/performance.md, memory). Unlike gunicorn's `preload_app`, a SIGHUP builds the
# app again from the code on disk.


def on_starting(server) -> None:  # gunicorn's hook signature
    global _metrics_dir
    if not _metrics_dir:
        _metrics_dir = tempfile.mkdtemp(prefix="identity-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir  # inherited by the workers
    if not _prepare(server, "start"):
        if server.pidfile is not None:
            server.pidfile.unlink()
        on_exit(server)
        sys.exit(1)
    _load(server, "start")


def on_reload(server) -> None:
    """SIGHUP: gunicorn has read this file again; load the new code and configuration as
    at start (checked, migrated, then built in the master), before the new workers fork.
    A version that fails in the child is refused: the new workers start on the running
    one."""
    if _prepare(server, "reload"):
        _load(server, "reload")
    else:
        server.log.error("Reload refused: new workers start on the running version")


def post_worker_init(worker) -> None:
    # gunicorn's workers reset SIGHUP; the app's own handler (reload domains.yaml at
    # once, docs/domains.md) was installed while the master built it.
    handler = getattr(worker.app, _APP_SIGHUP, None)
    if callable(handler):
        signal.signal(signal.SIGHUP, handler)


# Set for the workers once the configuration was checked (the name is app.py's).
CHECKED_AT_START = "_IDENTITY_CHECKED_AT_START"
# Where the master keeps the SIGHUP handler its app installed, for the workers.
_APP_SIGHUP = "identity_sighup_handler"


def _prepare(server, when: str) -> bool:
    """Build the app once in a child process, before the master does: return whether it
    could.

    The configuration is checked (a bad value stops gunicorn with one line, not a
    traceback), the schema is migrated when AUTO_MIGRATE is on, and the signing key is
    created, so that the master then builds the app on a ready database. A child, so
    that a failure leaves the master as it was, and Alembic never enters it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            _forget_application()  # on reload, the running version's modules
            from gunicorn.util import import_app

            from identity.config import ConfigError

            try:
                import_app(server.app.app_uri)
                status = 0
            except ConfigError as e:
                server.log.error("Cannot %s: %s", when, e)
        except BaseException:
            server.log.exception("Cannot %s: the application failed to load", when)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    child_exit(server, pid)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        return False
    # Warned once by the child: neither the master nor a worker warns again.
    os.environ[CHECKED_AT_START] = "1"
    return True


def _load(server, when: str) -> None:
    """Build the app in the master from the code on disk (`import_app`), for every worker
    to fork with it: the libraries, the application and what the app built are then
    pages the workers share, and a worker starts (a reload, a recycled one) without
    importing or building anything.

    The running version goes first, so that the new one reuses its memory. Should the
    master fail where its child has just succeeded (a file changed meanwhile?), each
    worker builds the app itself, as it would without this hook.
    """
    gc.unfreeze()  # the running version is garbage to collect
    server.app.callable = None
    setattr(server.app, _APP_SIGHUP, None)
    _forget_application()
    gc.collect()
    hup = signal.getsignal(signal.SIGHUP)
    auto_migrate = os.environ.get("IDENTITY_AUTO_MIGRATE")
    # The child has just migrated (under the lock): the master's app skips it, so that
    # Alembic stays out of the processes that serve.
    os.environ["IDENTITY_AUTO_MIGRATE"] = "false"
    # The app takes SIGHUP when nobody else does (routing): it gets it during the build,
    # gunicorn's handler is put back after; a SIGHUP sent meanwhile waits, blocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        app = server.app.wsgi()
        setattr(server.app, _APP_SIGHUP, signal.getsignal(signal.SIGHUP))
        _warm_up(server, app)
        _close_connections(app)
    except Exception:
        server.log.exception("Cannot %s: the master failed to build the app", when)
        server.log.error("Each worker builds the app itself")
        server.app.callable = None
        setattr(server.app, _APP_SIGHUP, None)
        _forget_application()
    finally:
        if auto_migrate is None:
            os.environ.pop("IDENTITY_AUTO_MIGRATE", None)
        else:
            os.environ["IDENTITY_AUTO_MIGRATE"] = auto_migrate
        signal.signal(signal.SIGHUP, hup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        gc.collect()
        _release_free_memory()
        # What the master holds stays put: the workers' garbage collections do not
        # touch (and so copy) these pages.
        gc.freeze()


def _release_free_memory() -> None:
    """Hand the pages malloc holds free (a replaced version's, mostly) back to the
    system (glibc's malloc_trim): the master does not keep them, nor do the workers copy
    them when they allocate there. About 5 MiB after a few reloads (docs/performance.md)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


# Requests the master answers before forking (`_warm_up`): the hot paths, read-only
# (an unknown token goes as far as the token check).
_WARM_UP_PATHS = (
    "/_matrix/identity/v2",
    "/_matrix/identity/api/v1/lookup?medium=email&address=warm-up@example.invalid",
    "/_matrix/identity/api/v1/info?medium=email&address=warm-up@example.invalid",
    "/_matrix/identity/v2/hash_details",
    "/_matrix/identity/v2/hash_details?access_token=warm-up",
    "/_matrix/identity/v2/terms",
    "/health",
)
_WARM_UP_ROUNDS = 16
# A documentation address (RFC 5737): the requests count against no real client's limits.
_WARM_UP_CLIENT = "192.0.2.1"


def _warm_up(server, app) -> None:
    """Answer a few requests of each hot kind in the master, so that what a first
    request leaves behind is built once, in pages the workers share, instead of once
    per worker: Python's specialised bytecode of every function on the way, compiled
    SQL, the URL matcher, metric children. About 10 MiB less per worker after a load
    (docs/performance.md).

    No delivery thread starts (threads do not survive a fork: the workers start
    theirs), and the master's metrics files are removed: /metrics counts none of these
    requests (their series are there, at 0, as the workers inherit the metric children).
    """
    client_class = getattr(app, "test_client", None)
    if client_class is None:
        return
    services = sys.modules.get("identity.services")  # our app's, not a benchmark's baseline
    current = app.extensions.get(services.EXTENSION) if services else None
    holding = current is not None and current.deliveries_stop is None
    if holding:
        current.deliveries_stop = threading.Event()  # "running": the request hook starts none
    try:
        client = client_class()
        for _ in range(_WARM_UP_ROUNDS):
            for path in _WARM_UP_PATHS:
                client.get(path, environ_base={"REMOTE_ADDR": _WARM_UP_CLIENT}).close()
    except Exception:
        server.log.warning("Warm-up stopped early", exc_info=True)
    finally:
        if holding:
            current.deliveries_stop = None
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            for path in glob.glob(os.path.join(directory, f"*_{os.getpid()}.db")):
                os.remove(path)


def _close_connections(app) -> None:
    """Close the connections that building the app and the warm-up opened (database,
    Redis): each worker opens its own, no connection is shared across a fork."""
    sqlalchemy = getattr(app, "extensions", {}).get("sqlalchemy")
    if sqlalchemy is not None:
        with app.app_context():
            for engine in sqlalchemy.engines.values():
                engine.dispose()
    # Those kept outside SQLAlchemy's pools: ours (the Redis limits), redis-py's.
    kinds = []
    if idle := sys.modules.get("identity.idle"):
        kinds.append((idle.IdleConnections, "close_all"))
    if redis := sys.modules.get("redis"):
        kinds.append((redis.ConnectionPool, "disconnect"))
    for holder in gc.get_objects() if kinds else ():
        for kind, close in kinds:
            if issubclass(type(holder), kind):  # not isinstance: proxies
                getattr(holder, close)()


# Where installed libraries live; any other module is the application's own.
_LIBRARY_DIRS = tuple(
    {
        os.path.join(os.path.realpath(path), "")
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_path(name))
    }
)


def _is_application(name: str, module) -> bool:
    path = getattr(module, "__file__", None)
    if not path or name in ("__main__", "__config__"):
        return False
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    installed = "site-packages" in parts or "dist-packages" in parts
    return not installed and not path.startswith(_LIBRARY_DIRS)


def _forget_application() -> None:
    """Take the application's modules (not the libraries) out of `sys.modules`, so that
    the next import reads them from disk, and their metrics out of prometheus's default
    registry, where they would be registered twice."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    modules = list(sys.modules.items())
    forgotten = [(name, module) for name, module in modules if _is_application(name, module)]
    # typing's caches (`Mapped[Invitation]`…) would keep every replaced version alive.
    for clear in getattr(typing, "_cleanups", ()):
        clear()
    for name, module in forgotten:
        del sys.modules[name]
        for value in list(vars(module).values()):
            if issubclass(type(value), MetricWrapperBase):  # not isinstance: proxies
                with contextlib.suppress(KeyError):
                    REGISTRY.unregister(value)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(getattr(worker, "pid", worker))


def on_exit(server) -> None:
    if _metrics_dir and _metrics_dir.startswith(tempfile.gettempdir()):
        shutil.rmtree(_metrics_dir, ignore_errors=True)
