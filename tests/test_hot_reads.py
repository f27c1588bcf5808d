"""Hot reads on PostgreSQL: one round trip each, and dropped connections recovered."""

import threading
import time
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import psycopg
import pytest
import requests
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from identity.accounts import token_hash
from identity.extensions import db
from identity.storage.associations import find_committed
from identity.storage.libpq import LibpqReader
from identity.storage.models import Association
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.conftest import _empty_postgres
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import register_user

pytestmark = pytest.mark.postgres
INFO = {"medium": "email", "address": "marie@ac-versailles.fr"}


@pytest.fixture(params=["postgres"])
def db_url(request, postgres_database):
    yield postgres_database
    _empty_postgres(postgres_database)


@pytest.fixture
def statements(monkeypatch):
    """What is sent to PostgreSQL from the moment the test asks (`statements.start()`)."""

    class Sent(list):
        def start(self):
            for cls, name in ((psycopg.Cursor, "execute"), (psycopg.Connection, "rollback"),
                              (psycopg.Connection, "commit"), (LibpqReader, "execute"),
                              (LibpqReader, "prepare")):  # fmt: skip
                real = getattr(cls, name)

                def counting(conn, *args, _real=real, _name=name, **kwargs):
                    self.append(_name)
                    return _real(conn, *args, **kwargs)

                monkeypatch.setattr(cls, name, counting)

    return Sent()


@pytest.mark.parametrize("path", ["/info", "/lookup"])
def test_a_read_is_one_round_trip(app, client, statements, path):
    with app.app_context():
        when = datetime(2024, 1, 1, tzinfo=UTC)
        db.session.add(Association(medium="email", address=INFO["address"], mxid="@m:a.fr",
                                   created_at=when, not_before=when,
                                   not_after=when + timedelta(days=36500)))  # fmt: skip
        db.session.commit()
    assert client.get(V1 + path, query_string=INFO).status_code == 200  # pools filled
    statements.start()
    r = client.get(V1 + path, query_string=INFO)
    assert r.status_code == 200
    if path == "/lookup":
        assert r.json["mxid"] == "@m:a.fr"
    assert statements == ["execute"]  # no ping before, no rollback after


def test_hash_details_is_one_round_trip(client, fake_homeserver, statements):
    """The token check reads the current pepper in the same statement."""
    headers = auth(register_user(client, fake_homeserver, "alice"))
    first = client.get(f"{V2}/hash_details", headers=headers)  # the first pepper made
    statements.start()
    r = client.get(f"{V2}/hash_details", headers=headers)
    assert r.status_code == 200
    assert r.json["lookup_pepper"] == first.json["lookup_pepper"]
    assert statements == ["execute"]
    statements.clear()
    lookup = {"addresses": [], "algorithm": "sha256", "pepper": r.json["lookup_pepper"]}
    assert client.post(f"{V2}/lookup", json=lookup, headers=headers).status_code == 200
    assert statements == ["execute"]  # v2 lookups too: no separate pepper read


def test_a_v2_lookup_is_two_round_trips(app, client, fake_homeserver, statements):
    """The token check (with the pepper), then one statement for all the hashes: no
    transaction begun, pinged or rolled back around it."""
    headers = auth(register_user(client, fake_homeserver, "alice"))
    pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
    with app.app_context():
        when = datetime(2024, 1, 1, tzinfo=UTC)
        db.session.add(Association(medium="email", address=INFO["address"], mxid="@m:a.fr",
                                   lookup_hash="known", created_at=when, not_before=when,
                                   not_after=when + timedelta(days=36500)))  # fmt: skip
        db.session.commit()
    hashes = ["known", *(f"unknown{i}" for i in range(999))]
    lookup = {"addresses": hashes, "algorithm": "sha256", "pepper": pepper}
    assert client.post(f"{V2}/lookup", json=lookup, headers=headers).status_code == 200
    statements.start()
    r = client.post(f"{V2}/lookup", json=lookup, headers=headers)
    assert r.json == {"mappings": {"known": "@m:a.fr"}}
    assert statements == ["execute", "execute"]


def test_terminated_connections_are_recovered_without_a_failed_request(app, client):
    for _ in range(3):
        assert client.get(f"{V1}/info", query_string=INFO).status_code == 200
    with app.app_context():
        name = db.engine.url.database
        with db.engine.connect() as admin:
            killed = admin.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": name},
            ).all()  # fmt: skip
    assert killed
    for _ in range(5):
        assert client.get(f"{V1}/info", query_string=INFO).status_code == 200


def test_under_load_terminated_backends_fail_no_request(postgres_database, redis_url, tmp_path):
    """gunicorn as deployed (Redis limits on), clients reading hard, and every backend of
    the database terminated again and again: every read still answers."""
    many = "1000000/minute"
    env = service_env(postgres_database, tmp_path, WORKERS="2", THREADS="3",
                      DELIVERY_WORKER_ENABLED="false", MAIL_PRINT_TO_LOG="true",
                      RATELIMIT_STORAGE_URI=redis_url,
                      RATELIMIT_PER_IP=many, RATELIMIT_PER_USER=many)  # fmt: skip
    migrate(env)
    plain_url = postgres_database.replace("postgresql+psycopg://", "postgresql://")
    token = "loadTestToken0123456789"
    with psycopg.connect(plain_url, autocommit=True) as conn:
        conn.execute("INSERT INTO account (user_id, created_at) VALUES ('@a:a.fr', now())")
        conn.execute("INSERT INTO access_token (token_hash, user_id, created_at)"
                     " VALUES (%s, '@a:a.fr', now())", (token_hash(token),))  # fmt: skip
    server = Gunicorn(env, ("-c", "gunicorn.conf.py"))
    try:
        base, headers = server.base, {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{base}{V2}/hash_details", headers=headers, timeout=10).ok
        statuses, stop = [], threading.Event()

        reads = ((f"{V1}/info", {"params": INFO}), (f"{V1}/lookup", {"params": INFO}),
                 (f"{V2}/hash_details", {"headers": headers}))  # fmt: skip

        def read_hard() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    for path, options in reads:
                        statuses.append(session.get(base + path, timeout=10, **options).status_code)

        readers = [threading.Thread(target=read_hard) for _ in range(4)]
        for reader in readers:
            reader.start()
        killed = 0
        with psycopg.connect(plain_url, autocommit=True) as admin:
            for _ in range(8):
                time.sleep(0.3)
                killed += len(admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall())  # fmt: skip
        time.sleep(0.3)
        stop.set()
        for reader in readers:
            reader.join()
    finally:
        server.stop()
    assert killed >= 8
    assert len(statuses) > 100
    assert set(statuses) == {200}


def test_a_statement_the_server_forgot_is_prepared_again(app, client, statements):
    assert client.get(f"{V1}/info", query_string=INFO).status_code == 200  # prepared
    with app.app_context():
        reads = app.extensions["identity.hot_reads"]
        idle = list(reads.idle._idle)
        for reader in idle:
            reader.connection.pgconn.exec_(b"DEALLOCATE ALL")  # as a pooler's DISCARD ALL
    statements.start()
    assert client.get(f"{V1}/info", query_string=INFO).status_code == 200
    assert statements == ["execute", "prepare", "execute"]


def test_a_failing_read_is_not_tried_again(app, client, statements):
    # Only a dropped connection is worth a second try. PostgreSQL text refuses a NUL.
    assert client.get(f"{V1}/info", query_string=INFO).status_code == 200
    with app.app_context():
        statements.start()
        with pytest.raises(DBAPIError):
            find_committed("email", "a\x00b@ac-versailles.fr")
    assert statements == ["prepare"]  # then its parameter is refused: no new connection
