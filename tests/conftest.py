"""Fixtures: the app on SQLite and PostgreSQL, its client, a fake clock, a real SMTP sink."""

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from app import create_app
from identity import worker
from identity.extensions import db
from testing.smtp import SmtpSink
from tests.support import FakeClock

pytest_plugins = ["tests.fake_homeserver", "tests.browser", "tests.leftovers"]

# PostgreSQL server for the storage tests; a database of our own is created on it.
POSTGRES_URL = os.environ.get(
    "IDENTITY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# A Redis database of our own for the shared rate limits; emptied around each test.
REDIS_URL = os.environ.get("IDENTITY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The instance folder of the developer's own `flask run`.
DEV_INSTANCE = Path(__file__).resolve().parent.parent / "instance"


def _dev_instance_files() -> set[str]:
    return set(os.listdir(DEV_INSTANCE)) if DEV_INSTANCE.is_dir() else set()


@pytest.fixture(autouse=True)
def _nothing_left_in_the_dev_instance():
    """A test keeps its files in its own folder (INSTANCE_PATH), out of the developer's
    `instance/`: a domains.yaml copy per test there would pile up run after run."""
    before = _dev_instance_files()
    yield
    added = {name for name in _dev_instance_files() - before if not name.startswith(".")}
    assert not added, f"written to {DEV_INSTANCE}: {sorted(added)}; set INSTANCE_PATH"


def fake_homeserver_ca_file() -> str:
    from tests.fake_homeserver import CA_FILE  # imported late: the module is a pytest plugin

    return CA_FILE


@pytest.fixture(scope="session")
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def smtputf8_sink():
    """A second SMTP sink that offers SMTPUTF8 (mailboxes such as straße@…)."""
    sink = SmtpSink(smtputf8=True).start()
    yield sink
    sink.stop()


@pytest.fixture(autouse=True)
def _clear_smtp(request):
    if "smtp" in request.fixturenames:
        request.getfixturevalue("smtp").clear()


@pytest.fixture
def clock():
    return FakeClock()


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL server, dropped at the end."""
    admin_url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"identity_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and unreachable at {admin_url}: {e}")
        pytest.skip(f"PostgreSQL unreachable at {admin_url}: {e}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_database():
    """A throwaway database for the session; each test leaves it empty (`db_url`)."""
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def redis_url():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        if IN_CI:
            pytest.fail(f"Redis is required in CI and unreachable at {REDIS_URL}: {e}")
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {e}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'identity.sqlite3'}"
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    _empty_postgres(url)


def _empty_postgres(url: str) -> None:
    """The PostgreSQL database lives for the whole session: leave it empty for the next test."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version'"
        ).fetchall()
        if tables:
            names = ", ".join(f'"{name}"' for (name,) in tables)
            conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


@pytest.fixture
def config(db_url, tmp_path, smtp):
    """The test configuration; tests may change it before asking for `app`."""
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": db_url,
        "AUTO_MIGRATE": True,
        "MAIL_SERVER": smtp.host,
        "MAIL_PORT": smtp.port,
        "MAIL_SUPPRESS_SEND": False,
        "MAIL_DEFAULT_SENDER": "Tchap <noreply@tchap.test>",
        "PUBLIC_BASE_URL": "https://id.tchap.test",
        "SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
        # Files the app keeps (domains.yaml's last good copy) stay out of `instance/`.
        "INSTANCE_PATH": str(tmp_path),
        "RATELIMIT_ENABLED": False,
        "DELIVERY_WORKER_ENABLED": False,
        "FEDERATION_CA_FILE": fake_homeserver_ca_file(),
        # Fake homeservers listen on loopback; tests of the refusal empty this list.
        "FEDERATION_IP_ALLOWLIST": ["127.0.0.1/32"],
        # Tests of the core API bind addresses to Matrix IDs on fake homeservers that
        # domains.yaml does not know; the routing tests switch the restriction on.
        "RESTRICT_BINDS_TO_ROUTING": False,
    }


def close_app(app) -> None:
    """Stop the app's delivery thread, if it runs, then close its database connections.

    In this order: a pass still running when the engine is disposed would check a
    connection out of the disposed pool, and leave it to the garbage collector unclosed
    (a ResourceWarning, in whichever later test the collector happens to run).
    """
    worker.stop(app)
    with app.app_context():
        db.engine.dispose()  # the hot reads' own engine with it (engine_disposed)


@pytest.fixture
def app(config, clock):
    app = create_app(config, clock=clock)
    yield app
    close_app(app)


@pytest.fixture
def make_app(config, clock):
    """Build more apps on the test database (another process, a restart), closed afterwards."""
    made = []

    def make(**overrides):
        made.append(create_app({**config, **overrides}, clock=clock))
        return made[-1]

    yield make
    for other in made:
        close_app(other)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()
