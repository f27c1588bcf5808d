"""Two instances of the service on one PostgreSQL and one Redis, as production runs it:
a rate limit holds across both, each queued invitation is delivered exactly once, and
an instance killed with SIGKILL under load loses nothing it acknowledged."""

import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from testing.servers import ROOT
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.fake_homeserver import CA_FILE

pytestmark = pytest.mark.postgres

SECRET = {"Authorization": "Bearer scale-secret"}
V1 = "/_matrix/identity/api/v1"


@pytest.fixture
def shared_storage(postgres_database, redis_url):
    yield postgres_database, redis_url
    with psycopg.connect(postgres_database.replace("postgresql+psycopg://", "postgresql://")) as c:
        c.execute("DROP SCHEMA public CASCADE")
        c.execute("CREATE SCHEMA public")


@pytest.fixture
def instances(shared_storage, smtp, tmp_path):
    database, redis_url = shared_storage
    env = service_env(
        database,
        tmp_path,
        RATELIMIT_STORAGE_URI=redis_url,
        RATELIMIT_PER_IP="8/minute",
        TRUSTED_PROXY_COUNT="1",
        MAIL_SERVER=smtp.host,
        MAIL_PORT=str(smtp.port),
        INTERNAL_API_SECRET="scale-secret",
        RESTRICT_BINDS_TO_ROUTING="false",
        DELIVERY_POLL_SECONDS="0.2",
        FEDERATION_CA_FILE=CA_FILE,
        FEDERATION_IP_ALLOWLIST='["127.0.0.1/32"]',
        MAIL_LIMIT_PER_ADDRESS="100/hour",
        WORKERS="2",
        THREADS="4",
    )
    # One key for both, as every host of a deployment shares it.
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "keys", "generate"],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
    migrate(env)
    started: list[Gunicorn] = []
    try:
        for _ in range(2):
            started.append(Gunicorn(env, ("-c", "gunicorn.conf.py")))
        yield started
    finally:
        for instance in started:
            instance.stop()


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def store_invite(base: str, address: str, ip: str) -> requests.Response:
    body = {"medium": "email", "address": address, "room_id": "!r:agent.dinum.tchap.gouv.fr",
            "sender": "@marie:agent.dinum.tchap.gouv.fr"}  # fmt: skip
    return requests.post(f"{base}{V1}/store-invite", json=body, headers=from_ip(ip), timeout=10)


def bind(base: str, address: str, mxid: str) -> requests.Response:
    body = {"address": address, "mxid": mxid}
    return requests.post(f"{base}/_matrix/identity/internal/bind", json=body, headers=SECRET,
                         timeout=10)  # fmt: skip


def test_a_rate_limit_holds_across_instances(instances):
    first, second = instances
    ip = "203.0.113.7"
    info = "/_matrix/identity/api/v1/info?medium=email&address=a%40ac-versailles.fr"
    statuses = [
        requests.get(
            f"{(first, second)[i % 2].base}{info}", headers=from_ip(ip), timeout=5
        ).status_code
        for i in range(8)
    ]
    assert statuses == [200] * 8
    for instance in instances:
        r = requests.get(f"{instance.base}{info}", headers=from_ip(ip), timeout=5)
        assert (r.status_code, r.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert r.json()["retry_after_ms"] > 0


def test_each_invitation_is_delivered_exactly_once(instances, fake_homeserver):
    first, second = instances
    guests = [f"guest{i}@partenaire.example" for i in range(30)]
    tokens = {}
    for i, address in enumerate(guests):
        r = store_invite(instances[i % 2].base, address, ip=f"198.51.100.{i}")
        assert r.status_code == 200, r.text
        tokens[address] = r.json()["token"]
    # Binding every guest queues 30 deliveries; 4 workers on 2 instances race for them.
    for i, address in enumerate(guests):
        assert bind(instances[i % 2].base, address, fake_homeserver.user_id(f"g{i}")).ok
    deadline = time.monotonic() + 30
    while len(fake_homeserver.onbind_calls) < len(guests):
        assert time.monotonic() < deadline, f"{len(fake_homeserver.onbind_calls)} delivered"
        time.sleep(0.2)
    time.sleep(1)  # would a second delivery of any of them still come?
    delivered = Counter(
        invite["signed"]["token"] for call in fake_homeserver.onbind_calls
        for invite in call["invites"]
    )  # fmt: skip
    assert delivered == Counter(tokens.values())


def test_sigkill_under_load_loses_nothing_acknowledged(instances, shared_storage):
    first, second = instances
    acknowledged_invites, acknowledged_binds = set(), set()
    dropped = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def work(worker: int) -> None:
        n = worker
        while not stop.is_set():
            target = instances[n % 2]
            try:
                ip = f"192.0.{worker}.{n // 16 % 250}"  # below the per-IP limit
                r = store_invite(target.base, f"load{n}@partenaire.example", ip=ip)
                if r.status_code == 200:
                    with lock:
                        acknowledged_invites.add(r.json()["token"])
                address = f"bound{n}@ac-versailles.fr"
                if bind(target.base, address, f"@u{n}:agent.education.test").status_code == 200:
                    with lock:
                        acknowledged_binds.add(address)
            except requests.RequestException:
                with lock:  # the killed instance drops connections: never acknowledged
                    dropped[target.port] += 1
            n += 16

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(work, worker) for worker in range(16)]
        time.sleep(1.5)
        first.kill()  # in the middle of the load
        time.sleep(1.0)
        stop.set()
        for future in futures:
            future.result()
    assert dropped[first.port] > 0, "the kill did not happen under load"
    assert acknowledged_invites and acknowledged_binds
    database, _ = shared_storage
    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://")) as c:
        stored_invites = {row[0] for row in c.execute("SELECT token FROM invitation")}
        stored_binds = {row[0] for row in c.execute("SELECT address FROM association")}
    assert acknowledged_invites <= stored_invites
    assert acknowledged_binds <= stored_binds
    # The survivor still answers, and sees what the killed instance acknowledged.
    some = sorted(acknowledged_binds)[0]
    r = requests.get(f"{second.base}{V1}/lookup", params={"medium": "email", "address": some},
                     timeout=5)  # fmt: skip
    assert r.json()["address"] == some
