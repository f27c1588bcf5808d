"""gunicorn.conf.py: several workers, one /metrics, scrubbed JSON access log, graceful reload."""

import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from tests.conftest import POSTGRES_URL
from tests.servers import Gunicorn
from tests.servers import migrate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gunicorn(tmp_path):
    env = {
        **os.environ,
        "IDENTITY_WORKERS": "2",
        "IDENTITY_THREADS": "2",
        "IDENTITY_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "IDENTITY_SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
        "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
        "IDENTITY_RATELIMIT_ENABLED": "false",
    }
    migrate(env)
    log = (tmp_path / "gunicorn.log").open("w+")
    server = Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log)
    yield server, server.base, log
    server.stop()
    log.close()


def test_workers_metrics_logs_and_reload(gunicorn):
    server, base, log = gunicorn
    address = "marie.dupont@ac-versailles.fr"
    for _ in range(20):
        r = requests.get(f"{base}/_matrix/identity/api/v1/info",
                         params={"medium": "email", "address": address}, timeout=5)  # fmt: skip
        assert r.status_code == 200
    requests.get(f"{base}/_matrix/identity/invitation/WzEsInNlY3JldCJd.x.y", timeout=5)

    # /metrics adds up every worker's counters.
    text = requests.get(f"{base}/metrics", timeout=5).text
    line = next(
        line for line in text.splitlines()
        if line.startswith("identity_requests_total{")
        and 'endpoint="/_matrix/identity/api/v1/info"' in line and 'status="200"' in line
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) == 20

    # A graceful reload (SIGHUP) keeps answering.
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # New workers may take seconds to boot on a loaded machine: slow, never lost.
        assert requests.get(f"{base}/health", timeout=30).status_code == 200
        time.sleep(0.2)

    log.flush()
    log.seek(0)
    lines = log.read().splitlines()
    access = [json.loads(line) for line in lines if line.startswith('{"time": "[')]
    assert len(access) >= 21
    assert all(entry["request_id"] not in ("", "-") for entry in access)
    whole = "\n".join(lines)
    assert "marie.dupont" not in whole and "WzEsInNlY3JldCJd" not in whole
    assert any(e["request"].startswith("GET /_matrix/identity/api/v1/info?… ") for e in access)


def _gunicorn_env(tmp_path, database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "IDENTITY_SQLALCHEMY_DATABASE_URI": database_url,
        "IDENTITY_SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
        "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
        "IDENTITY_RATELIMIT_ENABLED": "false",
        "IDENTITY_MAIL_PRINT_TO_LOG": "true",
        **extra,
    }


def _fresh_postgres_database():
    """A new, empty PostgreSQL database: (its URL, a function that drops it)."""
    admin_url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"identity_cold_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name, drop


def _lookup(base: str) -> int:
    params = {"medium": "email", "address": "a@b.fr"}
    url = f"{base}/_matrix/identity/api/v1/lookup"
    return requests.get(url, params=params, timeout=30).status_code


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_cold_starts_migrate_once_and_every_worker_serves(tmp_path, engine):
    """Four workers on a new database, three times in a row: the schema is migrated
    once, before any worker starts, the signing key is created once, and every worker
    boots and answers."""
    for attempt in range(3):
        here = tmp_path / str(attempt)
        here.mkdir()
        if engine == "sqlite":
            url, drop = f"sqlite:///{here / 'db.sqlite3'}", None
        else:
            url, drop = _fresh_postgres_database()
        env = _gunicorn_env(here, url, IDENTITY_WORKERS="4", IDENTITY_THREADS="1",
                            IDENTITY_AUTO_MIGRATE="true")  # fmt: skip
        try:
            with (here / "gunicorn.log").open("w+") as log:
                server = Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log)
                try:
                    assert (here / "signing.key").exists()  # before any request needed it
                    deadline = time.monotonic() + 30
                    pids: set[str] = set()
                    while len(pids) < 4 and time.monotonic() < deadline:
                        # Concurrent lookups (each reads the tables) reach every worker.
                        with ThreadPoolExecutor(max_workers=8) as pool:
                            answers = list(pool.map(_lookup, [server.base] * 16))
                        assert all(status == 200 for status in answers)
                        log.flush()
                        log.seek(0)
                        pids = {
                            json.loads(line)["pid"] for line in log.read().splitlines()
                            if line.startswith('{"time": "[') and "/lookup?" in line
                        }  # fmt: skip
                    assert server.process.poll() is None
                finally:
                    server.stop()
                log.seek(0)
                text = log.read()
        finally:
            if drop is not None:
                drop()
        booted = text.count("Booting worker with pid")
        assert booted == 4, text
        assert "Worker failed to boot" not in text and "already exists" not in text, text
        assert "Exception in worker process" not in text, text
        assert text.count("Running upgrade  -> 0001") == 1, text
        assert text.count("Generated a new signing key") == 1, text
        assert len(pids) == 4, f"only {len(pids)} of 4 workers answered"
