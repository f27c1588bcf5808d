"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every value can be overridden on the command line or with GUNICORN_CMD_ARGS. Workers
are stateless: rate limits (Redis), the delivery queue and everything else shared live
in PostgreSQL and Redis, so any number of workers and hosts answer alike.
"""

import gc
import importlib
import multiprocessing
import os
import shutil
import sys
import tempfile

bind = os.environ.get("IDENTITY_BIND", "0.0.0.0:8090")

# Threads overlap the waits on PostgreSQL, SMTP and homeservers; processes use the
# cores. See docs/performance.md for the measurements behind these defaults.
worker_class = "gthread"
workers = int(os.environ.get("IDENTITY_WORKERS", multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("IDENTITY_THREADS", 4))

# Graceful restarts: SIGHUP reloads the configuration and replaces the workers one by
# one; a worker finishes its requests for up to graceful_timeout seconds.
graceful_timeout = 30
timeout = 60
keepalive = 5
# Recycle workers now and then, so that no slow leak can build up: rarely, since a
# worker's start costs CPU that a busy server takes from requests (10,000 recycled each
# worker every few seconds at full load, 10-20% of all CPU: docs/performance.md). The
# master holds the libraries already (`_share_libraries`), so a new worker forks with
# them and only builds the app.
max_requests = 1_000_000
max_requests_jitter = 100_000
# gunicorn >= 25.1 opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl):
# several instances on one host would take it from each other. We manage instances
# with signals (docs/operations.md), so none is opened.
control_socket_disable = True

# Access log: JSON, the route without its query string (addresses, codes, secrets)
# and landing-page tokens scrubbed by identity.logs.GunicornLogger, which scrubs the
# error log too; `pid` is the worker that answered.
logger_class = "identity.logs.GunicornLogger"
accesslog = "-"
errorlog = "-"
access_log_format = (
    '{"time": "%(t)s", "remote": "%(h)s", "request": "%(r)s", "status": "%(s)s",'
    ' "bytes": "%(B)s", "duration_ms": "%(M)s", "request_id": "%({x-request-id}o)s",'
    ' "pid": "%(p)s"}'
)

# Behind a reverse proxy, set TRUSTED_PROXY_COUNT in the service's configuration (the
# app applies Werkzeug's ProxyFix); gunicorn itself needs the proxy's address here.
forwarded_allow_ips = os.environ.get("IDENTITY_FORWARDED_ALLOW_IPS", "127.0.0.1")

# Optional TLS, when no proxy terminates it.
certfile = os.environ.get("IDENTITY_TLS_CERT") or None
keyfile = os.environ.get("IDENTITY_TLS_KEY") or None

# Prometheus: every worker writes its counters to a shared directory, which /metrics
# adds up; a fresh directory per master, removed when it stops.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def on_starting(server) -> None:  # gunicorn's hook signature
    global _metrics_dir
    if not _metrics_dir:
        _metrics_dir = tempfile.mkdtemp(prefix="identity-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir  # inherited by the workers
    _prepare(server)


# Set for the workers once the configuration was checked (the name is app.py's).
CHECKED_AT_START = "_IDENTITY_CHECKED_AT_START"


def _prepare(server) -> None:
    """Build the app once before any worker starts, in a child process.

    The configuration is checked (a bad value stops gunicorn with one line, not a
    traceback per worker), the schema is migrated when AUTO_MIGRATE is on, and the
    signing key is created, so that the workers start on a ready database instead of
    racing each other to migrate it. A child, so that the master imports none of the
    application: workers started by a graceful reload (SIGHUP) load the code afresh.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            from gunicorn.util import import_app

            from identity.config import ConfigError

            try:
                import_app(server.app.app_uri)
                status = 0
                with os.fdopen(write_end, "w") as modules:
                    modules.write("\n".join(_libraries()))
            except ConfigError as e:
                server.log.error("Cannot start: %s", e)
        except BaseException:
            server.log.exception("Cannot start: the application failed to load")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as modules:
        libraries = modules.read().split()
    _, wait_status = os.waitpid(pid, 0)
    child_exit(server, pid)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        if server.pidfile is not None:
            server.pidfile.unlink()
        on_exit(server)
        sys.exit(1)
    # The workers need not warn again about what the child warned about.
    os.environ[CHECKED_AT_START] = "1"
    _share_libraries(libraries)


_HERE = os.path.dirname(os.path.abspath(__file__))


def _libraries() -> list[str]:
    """The modules loaded, but the application's own (those under this directory, not
    in a virtualenv's site-packages)."""
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        own = path.startswith(_HERE + os.sep) and os.sep + "site-packages" + os.sep not in path
        if name != "__main__" and not own:
            names.append(name)
    return names


def _share_libraries(names: list[str]) -> None:
    """Import in the master the libraries the app loaded (Flask, SQLAlchemy, drivers…),
    never the application's code, so that every worker forks with them in pages it
    shares with the master and the other workers, and starts (a reload, a recycled
    worker) without importing them. Workers still load the application afresh: a
    graceful reload (SIGHUP) serves new code and configuration; a new version of a
    library needs a restart.
    """
    for name in names:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: S112 (a module only loadable its own way: skipped)
                continue
    # What the master holds now stays put: the workers' garbage collections do not
    # touch (and so copy) these pages.
    gc.collect()
    gc.freeze()


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(getattr(worker, "pid", worker))


def on_exit(server) -> None:
    if _metrics_dir and _metrics_dir.startswith(tempfile.gettempdir()):
        shutil.rmtree(_metrics_dir, ignore_errors=True)
