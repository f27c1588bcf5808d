"""gunicorn.conf.py: several workers, one /metrics, scrubbed JSON access log, graceful reload."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

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
