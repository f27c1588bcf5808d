"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every value can be overridden on the command line or with GUNICORN_CMD_ARGS. Workers
are stateless: rate limits (Redis), the delivery queue and everything else shared live
in PostgreSQL and Redis, so any number of workers and hosts answer alike.
"""

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
# Recycle workers now and then, so that no slow leak can build up.
max_requests = 10_000
max_requests_jitter = 1_000
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
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            from gunicorn.util import import_app

            from identity.config import ConfigError

            try:
                import_app(server.app.app_uri)
                status = 0
            except ConfigError as e:
                server.log.error("Cannot start: %s", e)
        except BaseException:
            server.log.exception("Cannot start: the application failed to load")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    child_exit(server, pid)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        if server.pidfile is not None:
            server.pidfile.unlink()
        on_exit(server)
        sys.exit(1)
    # The workers need not warn again about what the child warned about.
    os.environ[CHECKED_AT_START] = "1"


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(getattr(worker, "pid", worker))


def on_exit(server) -> None:
    if _metrics_dir and _metrics_dir.startswith(tempfile.gettempdir()):
        shutil.rmtree(_metrics_dir, ignore_errors=True)
