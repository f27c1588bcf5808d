"""Fixtures of the fault-injection tests: the service under gunicorn with the shipped
gunicorn.conf.py, on a PostgreSQL cluster and a Redis of its own (testing/faults.py),
which the tests stop, freeze and restart.

One cluster and one Redis serve the whole session: each test gets a new database,
copied from a template migrated once (with a v2 account and its token), and an emptied
Redis, both running and thawed whatever the previous test left them in.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.faults import PostgresCluster
from testing.faults import RedisServer
from testing.faults import postgres_installed
from testing.servers import ROOT
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.conftest import IN_CI
from tests.faults.client import Service

TEMPLATE = "identity_faults_template"
USER_ID = "@agent:agent.dinum.tchap.gouv.fr"


def _require(program: str, found: bool) -> None:
    if found:
        return
    if IN_CI:
        pytest.fail(f"the fault-injection tests need {program}, required in CI")
    pytest.skip(f"{program} is not installed")


@pytest.fixture(scope="session")
def keys_dir() -> Iterator[Path]:
    """One signing key for every service of the session (the template's token is theirs)."""
    directory = Path(tempfile.mkdtemp(prefix="identity-faults-keys-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(keys_dir) -> Iterator[PostgresCluster]:
    _require("PostgreSQL's initdb and postgres", postgres_installed())
    # The server refuses root, and only root runs it as another user.
    _require("root, to run PostgreSQL as its own user", os.geteuid() == 0)
    cluster = PostgresCluster()
    try:
        cluster.start()
        url = cluster.create_database(TEMPLATE)
        env = service_env(url, keys_dir)
        migrate(env)
        cluster.token = _issue_token(env)  # type: ignore[attr-defined]
        yield cluster
    finally:
        cluster.destroy()


def _issue_token(env: dict[str, str]) -> str:
    """A v2 access token for USER_ID, terms accepted, as `flask accounts token` gives it."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "accounts", "token", USER_ID,
         "--accept-terms"],
        cwd=ROOT, env={**env, "IDENTITY_MAIL_PRINT_TO_LOG": "true"}, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def database(cluster) -> Iterator[str]:
    """A new migrated database on the session's cluster, running and thawed."""
    cluster.thaw()
    if not cluster.running:
        cluster.start()
    name = f"identity_faults_{uuid.uuid4().hex[:12]}"
    url = cluster.create_database(name, template=TEMPLATE)
    yield url
    cluster.thaw()
    if not cluster.running:
        cluster.start()
    cluster.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    _require("redis-server", shutil.which("redis-server") is not None)
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.destroy()


@pytest.fixture
def redis(redis_server) -> str:
    """The session's Redis, running, thawed and empty: its URL."""
    redis_server.thaw()
    if not redis_server.running:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def serve(tmp_path, keys_dir, smtp) -> Iterator[Callable[..., Service]]:
    """Start the service under gunicorn with the shipped configuration: 3 workers of 4
    threads, mail to the session's SMTP sink, limits high enough for a load test."""
    started: list[Gunicorn] = []

    def start(database_url: str, *, token: str | None = None, **settings: str) -> Service:
        settings = {
            "WORKERS": "3",
            "THREADS": "4",
            "LOG_FORMAT": "json",
            "DELIVERY_WORKER_ENABLED": "false",
            "RESTRICT_BINDS_TO_ROUTING": "false",
            "MAIL_SERVER": smtp.host,
            "MAIL_PORT": str(smtp.port),
            "RATELIMIT_PER_IP": "100000/minute",
            "RATELIMIT_PER_USER": "100000/minute",
            "MAIL_LIMIT_PER_ADDRESS": "1000/hour",
            **settings,
        }
        env = service_env(database_url, keys_dir, **settings)
        log = tmp_path / f"gunicorn-{len(started)}.log"
        server = Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log)
        started.append(server)
        return Service(server, log, token)

    yield start
    for server in started:
        server.stop()
