"""A dependency that cannot answer: 503 with Retry-After in bounded time, one warning
per outage, never a 500; the mechanisms one by one, in process, on real servers.

tests/faults/ does the same to whole deployments under gunicorn (stopped, frozen and
restarted servers under load).
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from identity import outages
from identity.storage.timeouts import DatabaseTimeouts
from testing.processes import free_port
from testing.processes import wait_until
from testing.smtp import SmtpSink
from tests.helpers import request_code

LOOKUP = "/_matrix/identity/api/v1/lookup?medium=email&address=someone@ac-versailles.fr"
STATUS = "/_matrix/identity/v2"
NOBODY_LISTENS = "postgresql+psycopg://postgres@127.0.0.1:9/identity"  # discard port


@pytest.fixture
def db_url(tmp_path) -> str:
    """SQLite unless a test names its database: most here point the app elsewhere."""
    return f"sqlite:///{tmp_path / 'identity.sqlite3'}"


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each test starts outside any outage, as far as the warnings go."""
    outages._last_warning.clear()


def unavailable_count(dependency: str) -> float:
    return outages.UNAVAILABLE.labels(dependency)._value.get()


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.json["errcode"] == "M_UNKNOWN"
    assert response.headers["Retry-After"] == "5"


# The database stopped.


def test_a_stopped_database_answers_503_with_one_warning_and_no_traceback(make_app, caplog, smtp):
    app = make_app(SQLALCHEMY_DATABASE_URI=NOBODY_LISTENS, AUTO_MIGRATE=False)
    client = app.test_client()
    before = unavailable_count(outages.DATABASE)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert_unavailable(client.get(LOOKUP))
        assert_unavailable(request_code(client, "agent@ac-versailles.fr"))
        lookup = client.post(
            "/_matrix/identity/v2/lookup",
            json={"addresses": ["x"], "algorithm": "none", "pepper": "p"},
            headers={"Authorization": "Bearer some-token"},
        )
        assert_unavailable(lookup)
        # What needs no database still answers.
        assert client.get(STATUS).status_code == 200
    warnings = [r for r in caplog.records if r.name == "identity.outages"]
    assert len(warnings) == 1 and "database is unavailable" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an outage"
    assert unavailable_count(outages.DATABASE) - before >= 5
    assert not smtp.messages  # no code went out for a session that was never stored


def test_health_says_the_database_is_unreachable(make_app):
    client = make_app(SQLALCHEMY_DATABASE_URI=NOBODY_LISTENS, AUTO_MIGRATE=False).test_client()
    health = client.get("/health")
    assert_unavailable(health)
    assert health.json["database"] == "unreachable"


def test_an_error_that_is_no_outage_stays_a_500(app):
    """A missing table is a broken deployment, not an outage to wait out."""
    with app.app_context():
        from identity.extensions import db

        with db.engine.begin() as connection:
            connection.execute(text("DROP TABLE association"))
    client = app.test_client()
    app.testing = False  # the production path: Flask's 500 handler, not the test's raise
    response = client.get(LOOKUP)
    assert response.status_code == 500 and response.json["errcode"] == "M_UNKNOWN"


# SQLite: full or locked.


def test_sqlite_locked_by_another_writer_answers_503_and_reads_go_on(make_app, tmp_path):
    path = tmp_path / "locked.sqlite3"
    app = make_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{path}",
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.2}},
    )
    client = app.test_client()
    assert client.get(LOOKUP).status_code == 200  # migrated, answering
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as a stuck writer would
    try:
        assert_unavailable(request_code(client, "agent@ac-versailles.fr"))
        assert client.get(LOOKUP).status_code == 200  # readers are not blocked
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert request_code(client, "agent@ac-versailles.fr").status_code == 200


@pytest.mark.parametrize(
    "message",
    ["database or disk is full", "database is locked", "disk I/O error"],
)
def test_sqlite_states_of_the_disk_are_outages(message):
    from sqlalchemy.exc import OperationalError as Wrapped

    error = Wrapped("INSERT …", None, sqlite3.OperationalError(message))
    assert outages.unavailable_dependency(error) == outages.DATABASE


def test_sqlite_schema_errors_are_no_outage():
    from sqlalchemy.exc import OperationalError as Wrapped

    error = Wrapped("SELECT …", None, sqlite3.OperationalError("no such table: association"))
    assert outages.unavailable_dependency(error) is None


# PostgreSQL frozen: a proxy in front of the real server stops passing bytes.


class FreezableProxy:
    """A TCP proxy to `target` on loopback that can stop forwarding (a paused server:
    the connection stays open and nothing answers)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                self.sockets += [client, server]
                for source, sink in ((client, server), (server, client)):
                    thread = threading.Thread(target=self._pipe, args=(source, sink), daemon=True)
                    self.threads.append(thread)
                    thread.start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every connection made so far (a server that went away)."""
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.flowing.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def proxied_postgres(postgres_database) -> Iterator[tuple[str, FreezableProxy]]:
    url = postgres_database
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = FreezableProxy((host, int(port)))
    yield url.replace(host_port, f"127.0.0.1:{proxy.port}"), proxy
    proxy.close()


@pytest.mark.postgres
def test_a_statement_on_a_frozen_server_fails_within_its_deadline(proxied_postgres):
    url, proxy = proxied_postgres
    timeouts = DatabaseTimeouts(connect=2, statement=1, pool=1)
    engine = create_engine(url, **timeouts.engine_options(url, {}))
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
            proxy.flowing.clear()
            started = time.monotonic()
            with pytest.raises(OperationalError) as raised:
                connection.execute(text("SELECT 2"))
            elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 4, elapsed  # the deadline: statement_timeout + 1 s
        assert outages.unavailable_dependency(raised.value) == outages.DATABASE
        assert raised.value.connection_invalidated  # never handed out again
        proxy.flowing.set()
        with engine.connect() as connection:  # a new connection works at once
            assert connection.execute(text("SELECT 3")).scalar() == 3
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_slow_statement_is_ended_by_the_server(postgres_database):
    timeouts = DatabaseTimeouts(connect=2, statement=0.5, pool=1)
    url = postgres_database
    engine = create_engine(url, **timeouts.engine_options(url, {}))
    try:
        with engine.connect() as connection, pytest.raises(OperationalError) as raised:
            connection.execute(text("SELECT pg_sleep(10)"))
        assert isinstance(raised.value.orig, psycopg.errors.QueryCanceled)
        assert outages.unavailable_dependency(raised.value) == outages.DATABASE
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_connecting_to_a_silent_server_gives_up(postgres_database):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks
    port = silent.getsockname()[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"
    timeouts = DatabaseTimeouts(connect=2, statement=1, pool=1)
    engine = create_engine(url, **timeouts.engine_options(url, {}))
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError) as raised, engine.connect():
            pass
        assert time.monotonic() - started < 4
        assert outages.unavailable_dependency(raised.value) == outages.DATABASE
    finally:
        engine.dispose()
        silent.close()


@pytest.mark.postgres
def test_hot_reads_on_a_frozen_server_answer_503_in_bounded_time(
    make_app, proxied_postgres, monkeypatch
):
    """v1 lookups read on their own connections (storage.hot_reads): the same deadline."""
    url, proxy = proxied_postgres
    make_app(SQLALCHEMY_DATABASE_URI=url)  # migrates
    # A serving process's limits (commands and tests have no statement limit).
    monkeypatch.setattr("app._serving", lambda: True)
    client = make_app(
        SQLALCHEMY_DATABASE_URI=url,
        AUTO_MIGRATE=False,
        DATABASE_STATEMENT_TIMEOUT_SECONDS=1,
        DATABASE_POOL_TIMEOUT_SECONDS=1,
    ).test_client()
    assert client.get(LOOKUP).status_code == 200
    proxy.flowing.clear()
    started = time.monotonic()
    assert_unavailable(client.get(LOOKUP))
    assert time.monotonic() - started < 4
    proxy.flowing.set()
    assert client.get(LOOKUP).status_code == 200  # a new connection, at once


@pytest.mark.postgres
def test_a_database_lost_after_the_answer_was_made_keeps_the_answer(make_app, proxied_postgres):
    """The request's transaction is rolled back after its view: a server gone by then
    costs nothing (the answer stands, the connection is dropped), never a 500."""
    url, proxy = proxied_postgres
    make_app(SQLALCHEMY_DATABASE_URI=url)  # migrates
    app = make_app(SQLALCHEMY_DATABASE_URI=url, AUTO_MIGRATE=False)

    @app.after_request
    def lose_the_database(response):
        proxy.cut()
        return response

    client = app.test_client()
    query = "sid=unknown&client_secret=secret"
    answer = client.get(f"/_matrix/identity/api/v1/3pid/getValidated3pid?{query}")
    assert answer.status_code == 400 and answer.json["errcode"] == "M_NO_VALID_SESSION"


# Redis stopped or frozen: the limits fail open, the mail quota closed.


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Redis of this test's own, which it may freeze (never the shared one)."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    try:
        wait_until(lambda: _answers(client), timeout=10, what="redis-server")
        yield f"redis://127.0.0.1:{port}/0", server
    finally:
        client.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_frozen_redis_lets_requests_by_and_refuses_mail(make_app, own_redis, caplog, smtp):
    uri, server = own_redis
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI=uri).test_client()
    assert client.get(STATUS).status_code == 200
    assert client.get("/health").json["redis"] == "ok"
    os.kill(server.pid, signal.SIGSTOP)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert client.get(STATUS).status_code == 200  # served, uncounted
        assert client.get(LOOKUP).status_code == 200
        code = request_code(client, "agent@ac-versailles.fr")
    elapsed = time.monotonic() - started
    # One timeout (REDIS_TIMEOUT_SECONDS, 1 s), then not asked again for a second.
    assert elapsed < 4, elapsed
    assert_unavailable(code)
    assert not smtp.messages
    warnings = [r.getMessage() for r in caplog.records if r.name == "identity.outages"]
    assert len(warnings) == 1 and "Redis is unavailable" in warnings[0]
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json["status"] == "degraded" and health.json["redis"] == "unreachable"
    os.kill(server.pid, signal.SIGCONT)
    time.sleep(1.1)  # past the pause after a failure
    assert request_code(client, "agent@ac-versailles.fr").status_code == 200
    assert client.get("/health").json == {**health.json, "status": "ok", "redis": "ok"}


def test_stopped_redis_is_the_same(make_app, own_redis):
    uri, server = own_redis
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI=uri).test_client()
    assert client.get(STATUS).status_code == 200
    server.terminate()
    server.wait(10)
    assert client.get(STATUS).status_code == 200
    assert_unavailable(request_code(client, "agent@ac-versailles.fr"))


# A mail server that accepts and never answers.


@pytest.fixture
def silent_smtp() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield listener.getsockname()[1]
    listener.close()


@pytest.mark.postgres
def test_a_silent_mail_server_holds_at_most_mail_max_concurrent_requests(
    make_app, silent_smtp, postgres_database
):
    # PostgreSQL: on SQLite the first request's session insert holds the one write lock
    # while it waits on the mail server, and the second waits for that lock instead.
    client_app = make_app(
        SQLALCHEMY_DATABASE_URI=postgres_database,
        MAIL_PORT=silent_smtp,
        MAIL_TIMEOUT=3,
        MAIL_MAX_CONCURRENT=1,
    )
    answers: list = []

    def ask(address: str) -> None:
        answers.append(request_code(client_app.test_client(), address))

    waiting = threading.Thread(target=ask, args=("first@ac-versailles.fr",))
    waiting.start()
    time.sleep(1.5)  # the first one has waited on the greeting longer than is healthy
    started = time.monotonic()
    second = request_code(client_app.test_client(), "second@ac-versailles.fr")
    assert time.monotonic() - started < 0.5  # at once, not after MAIL_TIMEOUT
    assert second.status_code == 500 and second.json["errcode"] == "M_EMAIL_SEND_ERROR"
    waiting.join(10)
    assert answers[0].json["errcode"] == "M_EMAIL_SEND_ERROR"  # after MAIL_TIMEOUT
    assert unavailable_count(outages.SMTP) >= 1


class SlowSmtpSink(SmtpSink):
    """A healthy mail server that takes its time over each message: the last of four
    mails through one slot waits for three sends, well within the slots' patience (1 s)
    on a busy machine too (at 0.2 s a message, it once waited past it in a full run)."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.1)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.postgres
def test_a_burst_of_mail_to_a_healthy_server_waits_for_its_slots(make_app, postgres_database):
    """Beyond MAIL_MAX_CONCURRENT, a request waits for a slot while the server answers
    promptly: a burst of codes is sent, not refused."""
    sink = SlowSmtpSink().start()
    try:
        app = make_app(
            SQLALCHEMY_DATABASE_URI=postgres_database, MAIL_PORT=sink.port, MAIL_MAX_CONCURRENT=1
        )
        answers: list = []
        threads = [
            threading.Thread(
                target=lambda n=n: answers.append(
                    request_code(app.test_client(), f"burst{n}@ac-versailles.fr")
                )
            )
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [answer.status_code for answer in answers] == [200] * 4
        assert sink.count == 4
    finally:
        sink.stop()


# /health and the start of a server: the schema must be the code's.


@pytest.mark.parametrize(("revision", "state"), [("0001", "behind"), ("9999_future", "ahead")])
def test_health_reports_a_schema_that_is_not_the_codes(app, revision, state):
    from identity.extensions import db

    client = app.test_client()
    assert client.get("/health").json["schema"] == "current"
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    health = client.get("/health")
    assert_unavailable(health)
    assert health.json["schema"] == state and health.json["database"] == "ok"


@pytest.fixture
def empty_postgres_database(postgres_database) -> Iterator[str]:
    """A database of this test's own, never migrated."""
    admin = psycopg.connect(postgres_database.replace("+psycopg", ""), autocommit=True)
    name = postgres_database.rsplit("/", 1)[1] + "_empty"
    admin.execute(f'CREATE DATABASE "{name}"')
    yield postgres_database.rsplit("/", 1)[0] + "/" + name
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.mark.postgres
def test_gunicorn_refuses_to_start_on_a_database_never_migrated(empty_postgres_database, tmp_path):
    """One line naming the command to run, and no listening server."""
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "IDENTITY_SQLALCHEMY_DATABASE_URI": empty_postgres_database,
        "IDENTITY_INSTANCE_PATH": str(tmp_path),
        "IDENTITY_DEVELOPMENT_DEPLOYMENT": "true",
        "IDENTITY_MAIL_PRINT_TO_LOG": "true",
        "IDENTITY_BIND": f"127.0.0.1:{free_port()}",
        "IDENTITY_WORKERS": "1",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--no-control-socket", "-c", "gunicorn.conf.py",
         "app:create_app()"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert finished.returncode != 0
    output = finished.stdout + finished.stderr
    assert "flask --app app db upgrade" in output, output
    assert "Traceback" not in output
