"""gunicorn with the shipped gunicorn.conf.py when clients or the operator are hard on
it (issue 21): SIGTERM drains the requests in flight, a few hundred slow clients do not
take every thread, a soak keeps its memory, a reload under load fails nothing."""

import http.client
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.faults import SlowSmtp
from tests.faults.client import Answer
from tests.faults.client import new_address
from tests.helpers import V1

pytestmark = pytest.mark.faults

GRACEFUL_TIMEOUT = 30  # gunicorn.conf.py's


@pytest.fixture
def slow_smtp():
    sink = SlowSmtp(delay=1).start()
    yield sink
    sink.stop()


@dataclass
class Write:
    """A requestToken sent on an established connection: what came back, and when."""

    status: int | str  # the exception's name when no answer came
    sid: str | None
    ended: float


def _write(port: int) -> Write:
    """Connect, send a requestToken and read the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=GRACEFUL_TIMEOUT + 5)
    body = {"client_secret": "DrainSecret1", "email": new_address("drained"), "send_attempt": 1}
    try:
        connection.request("POST", f"{V1}/validate/email/requestToken", body=json.dumps(body),
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        answer = json.loads(response.read())
        return Write(response.status, answer.get("sid"), time.monotonic())
    except (OSError, http.client.HTTPException, ValueError) as e:
        return Write(type(e).__name__, None, time.monotonic())
    finally:
        connection.close()


def test_sigterm_drains_the_requests_in_flight(cluster, database, serve, slow_smtp):
    """Sixteen clients sending requestTokens, each waiting a second on the mail server;
    they start no new request once the master is about to get SIGTERM (a load balancer
    has stopped sending). Every request in flight is answered (none reset), every
    acknowledged session is stored, and the master exits once they are answered,
    within graceful_timeout."""
    service = serve(database, MAIL_SERVER=slow_smtp.host, MAIL_PORT=str(slow_smtp.port),
                    MAIL_MAX_CONCURRENT="4")  # fmt: skip
    port = service.server.port
    stopping = threading.Event()

    def client() -> list[Write]:
        writes = []
        while not stopping.is_set():
            writes.append(_write(port))
        return writes

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(client) for _ in range(16)]
        time.sleep(3)
        stopping.set()
        time.sleep(0.1)  # a request that was starting has been sent
        signalled = time.monotonic()
        service.server.signal(signal.SIGTERM)
        writes = [write for future in futures for write in future.result()]
    assert service.server.process.wait(timeout=GRACEFUL_TIMEOUT + 5) == 0
    exited = time.monotonic()

    lost = [write for write in writes if not isinstance(write.status, int)]
    assert not lost, f"{len(lost)} of {len(writes)} requests got no answer: {lost[:5]}"
    assert {write.status for write in writes} <= {200, 503}, writes
    in_flight = [write for write in writes if write.ended > signalled]
    assert len(in_flight) >= 8, f"only {len(in_flight)} requests were in flight at SIGTERM"
    assert exited - signalled < GRACEFUL_TIMEOUT
    assert exited >= max(write.ended for write in writes) - 0.5  # it waited for them
    with cluster.connect(database.rsplit("/", 1)[1]) as connection:
        sids = {sid for (sid,) in connection.execute("SELECT sid FROM validation_session")}
    acknowledged = {write.sid for write in writes if write.status == 200}
    assert acknowledged <= sids, f"{len(acknowledged - sids)} acknowledged sessions lost"


def _slow_client(port: int) -> socket.socket:
    """A connection that sends the start of a request, and never the rest."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.sendall(b"GET /_matrix/identity/v2 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    return connection


def test_slow_clients_do_not_take_every_thread(cluster, database, serve):
    """300 connections that never finish their headers: the service still answers."""
    service = serve(database)
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            slow.append(_slow_client(service.server.port))
        time.sleep(1)  # every one accepted by a worker by now
        answers: list[Answer] = []
        for _ in range(5):
            answers += [service.status(timeout=5), service.info(timeout=5)]
    finally:
        for connection in slow:
            connection.close()
    assert all(answer.status == 200 for answer in answers), answers
    assert max(answer.seconds for answer in answers) < 2, answers


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_soak(cluster, database, redis, serve, smtp):
    """Twenty seconds of lookups and status requests with Redis limits: every answer
    200, and the workers' memory levels off."""
    service = serve(database, token=cluster.token, RATELIMIT_STORAGE_URI=redis)
    service.pepper()
    stop = threading.Event()
    answers: list[Answer] = []

    def client() -> None:
        while not stop.is_set():
            answers.extend([service.status(), service.lookup_v1(), service.info(),
                            service.hash_details(), service.lookup_v2()])  # fmt: skip

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(client) for _ in range(6)]
        time.sleep(4)  # warmed up: what a first request builds is built
        workers = service.server.workers()
        before = {pid: _rss_kib(pid) for pid in workers}
        time.sleep(20)
        after = {pid: _rss_kib(pid) for pid in workers}
        stop.set()
        for future in futures:
            future.result()
    assert len(answers) > 2000, len(answers)
    assert all(answer.status == 200 for answer in answers), [
        answer for answer in answers if answer.status != 200
    ][:10]
    grown = {pid: (after[pid] - before[pid]) // 1024 for pid in workers}
    assert all(mib < 8 for mib in grown.values()), f"MiB grown per worker: {grown}"
