"""A mail server that accepts connections and never answers (issue 21): the requests
that send a mail fail with M_EMAIL_SEND_ERROR within MAIL_TIMEOUT, no more than
MAIL_MAX_CONCURRENT of them per worker wait on it (the others fail at once), nothing is
stored for them, and the rest of the service keeps its latency."""

import threading
import time

import pytest

from testing.faults import HangingSmtp
from tests.faults.client import Answer
from tests.faults.client import in_parallel
from tests.faults.client import new_address
from tests.faults.client import percentile

pytestmark = pytest.mark.faults

MAIL_TIMEOUT = 5
WORKERS = 3
MAIL_MAX_CONCURRENT = 2  # the default, per worker
REQUESTS = 20


@pytest.fixture
def hanging_smtp():
    server = HangingSmtp().start()
    yield server
    server.stop()


def test_a_hanging_mail_server_stalls_nothing_else(cluster, database, serve, hanging_smtp):
    service = serve(database, MAIL_SERVER=hanging_smtp.host, MAIL_PORT=str(hanging_smtp.port),
                    MAIL_TIMEOUT=str(MAIL_TIMEOUT))  # fmt: skip
    stop = threading.Event()
    meanwhile: list[Answer] = []

    def keep_asking() -> None:
        while not stop.is_set():
            meanwhile.extend([service.status(timeout=10), service.info(timeout=10)])
            time.sleep(0.05)

    watcher = threading.Thread(target=keep_asking)
    watcher.start()
    try:
        time.sleep(0.5)
        mails = in_parallel(REQUESTS, lambda _: service.request_token(new_address()))
        time.sleep(0.5)
    finally:
        stop.set()
        watcher.join()

    assert [(a.status in (500, 503), a.errcode) for a in mails] == [
        (True, "M_EMAIL_SEND_ERROR")
    ] * REQUESTS, mails  # fmt: skip
    slowest = max(answer.seconds for answer in mails)
    assert slowest < MAIL_TIMEOUT + 3, mails
    # Beyond the mail slots of each worker, a request fails at once.
    at_once = [answer for answer in mails if answer.seconds < 2]
    assert len(at_once) >= REQUESTS - WORKERS * MAIL_MAX_CONCURRENT, mails
    assert 1 <= hanging_smtp.peak <= WORKERS * MAIL_MAX_CONCURRENT

    assert meanwhile and all(answer.status == 200 for answer in meanwhile), meanwhile
    latencies = [answer.seconds for answer in meanwhile]
    assert percentile(latencies, 0.99) < 1, sorted(latencies)[-10:]

    with cluster.connect(database.rsplit("/", 1)[1]) as connection:
        [(stored,)] = connection.execute("SELECT count(*) FROM validation_session")
    assert stored == 0
    assert service.unavailable_count("smtp") >= 1
