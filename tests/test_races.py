"""Validation sessions under concurrency, served as production serves them: gunicorn with
several workers and threads, on SQLite and PostgreSQL.

Identical requestToken calls arriving at once share one session and one mail per send
attempt; wrong codes sent from many threads at once never get more than
TOKEN_MAX_ATTEMPTS of them checked. Neither race may answer 500 or put a secret in a log.
"""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.helpers import V1
from tests.helpers import code_from_mail

ADDRESS = "marie.dupont@ac-versailles.fr"
SECRET = "RaceClientSecret42"
MAX_ATTEMPTS = 10


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'identity.sqlite3'}"
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as c:
        c.execute("DROP SCHEMA public CASCADE")
        c.execute("CREATE SCHEMA public")


@pytest.fixture
def served(database, smtp, tmp_path):
    """gunicorn.conf.py with 3 workers of 8 threads; yields the server and its log."""
    env = service_env(
        database,
        tmp_path,
        MAIL_SERVER=smtp.host,
        MAIL_PORT=str(smtp.port),
        RATELIMIT_ENABLED="false",
        DELIVERY_WORKER_ENABLED="false",
        TOKEN_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        WORKERS="3",
        THREADS="8",
    )
    migrate(env)
    with (
        (tmp_path / "gunicorn.log").open("a+") as log,
        Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log) as server,
    ):
        yield server, log


def at_once(count: int, call) -> list[requests.Response]:
    """Run `call(i)` from `count` threads released together."""
    barrier = threading.Barrier(count)

    def run(i: int) -> requests.Response:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def request_token(base: str, attempt: int) -> requests.Response:
    body = {"client_secret": SECRET, "email": ADDRESS, "send_attempt": attempt}
    return requests.post(f"{base}{V1}/validate/email/requestToken", json=body, timeout=30)


def submit_token(base: str, sid: str, token: str) -> requests.Response:
    body = {"sid": sid, "client_secret": SECRET, "token": token}
    return requests.post(f"{base}{V1}/validate/email/submitToken", json=body, timeout=30)


def server_log(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def test_identical_request_tokens_at_once_share_one_session_and_one_mail(served, smtp):
    server, log = served
    sids = set()
    for attempt in (1, 2, 3):
        responses = at_once(16, lambda _, attempt=attempt: request_token(server.base, attempt))
        assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses]
        sids |= {r.json()["sid"] for r in responses}
        # One mail per send attempt, however many identical requests carried it.
        assert len(smtp.to(ADDRESS)) == attempt
    assert len(sids) == 1
    codes = {code_from_mail(mail) for mail in smtp.to(ADDRESS)}
    assert len(codes) == 1  # the same session, so the same code
    logged = server_log(log)
    for secret in (SECRET, sids.pop(), codes.pop().replace("-", "")):
        assert secret not in logged


def test_wrong_codes_from_many_threads_stop_at_the_limit(served, smtp):
    server, log = served
    sid = request_token(server.base, 1).json()["sid"]
    code = code_from_mail(smtp.last())
    wrong = [f"{i:04d}-WXYZ" for i in range(300)]
    assert code not in wrong

    barrier = threading.Barrier(32)
    lock = threading.Lock()
    answers: Counter = Counter()

    def guess(worker: int) -> None:
        barrier.wait()
        with requests.Session() as http:
            for token in wrong[worker::32]:
                r = http.post(f"{server.base}{V1}/validate/email/submitToken",
                              json={"sid": sid, "client_secret": SECRET, "token": token},
                              timeout=30)  # fmt: skip
                with lock:
                    answers[r.status_code, r.json().get("errcode")] += 1

    with ThreadPoolExecutor(max_workers=32) as pool:
        for future in [pool.submit(guess, worker) for worker in range(32)]:
            future.result()

    # Exactly MAX_ATTEMPTS codes were compared; every other guess found the session closed.
    assert answers == {
        (400, "M_TOKEN_INCORRECT"): MAX_ATTEMPTS,
        (400, "M_NO_VALID_SESSION"): 300 - MAX_ATTEMPTS,
    }
    # The right code comes too late: the session stays closed.
    r = submit_token(server.base, sid, code)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NO_VALID_SESSION")
    logged = server_log(log)
    for secret in (SECRET, sid, code.replace("-", "")):
        assert secret not in logged
