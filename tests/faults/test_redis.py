"""Redis stopped and frozen under the service with Redis limits (issue 21).

The policy (docs/configuration.md): the per-IP and per-user request limits fail open,
the requests are served; the per-address mail quota, which protects third parties'
mailboxes, fails closed: requestToken and store-invite answer 503 with Retry-After.
/health stays 200 but says "degraded" and that Redis is unreachable.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from testing.processes import wait_until
from tests.faults.client import Answer
from tests.faults.client import Service
from tests.faults.client import new_address
from tests.faults.client import warnings_about

pytestmark = pytest.mark.faults

# REDIS_TIMEOUT_SECONDS is 1 by default: an answer within a few of them.
BOUND = 3


@pytest.fixture
def service(cluster, database, redis, serve) -> Service:
    service = serve(database, token=cluster.token, RATELIMIT_STORAGE_URI=redis)
    service.pepper()
    return service


def served_requests(service: Service, **options) -> list[Answer]:
    """Requests that only the request limits (failing open) ask Redis about."""
    return [
        service.status(**options),
        service.lookup_v1(**options),
        service.hash_details(**options),
        service.info(**options),
    ]


def mail_requests(service: Service, **options) -> list[Answer]:
    """Requests that send a mail, and so count against the address's quota in Redis."""
    return [
        service.request_token(new_address(), **options),
        service.store_invite(new_address("guest"), **options),
    ]


def all_sent(service: Service) -> bool:
    """Whether a few rounds of mail requests, reaching every worker, all succeed."""
    return all(answer.status == 200 for _ in range(3) for answer in mail_requests(service))


def assert_health(service: Service, *, status: str, redis: str) -> None:
    health = service.health()
    assert health.status == 200, health.body
    fields = ("status", "database", "redis")
    assert [health.body.get(key) for key in fields] == [status, "ok", redis], health.body


def test_redis_stopped(redis_server, service):
    offset = len(service.log())
    redis_server.stop()
    served: list[Answer] = []
    refused: list[Answer] = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        served += served_requests(service)
        refused += mail_requests(service)
    health = service.health()
    lines = service.log_lines_since(offset)
    redis_server.start()

    assert all(answer.status == 200 for answer in served), [
        (answer, answer.body) for answer in served if answer.status != 200
    ][:10]
    assert all(answer.is_unavailable() for answer in refused), [
        (answer, answer.body, answer.retry_after) for answer in refused
    ][:10]
    text = "\n".join(lines)
    assert "Traceback" not in text, text[-3000:]
    warnings = warnings_about(lines, "redis")
    assert 1 <= len(warnings) <= 2 * 3, warnings
    fields = ("status", "database", "redis")
    assert health.status == 200, health.body
    assert [health.body.get(key) for key in fields] == ["degraded", "ok", "unreachable"]

    # Each worker asks Redis again a moment after its last failed try: every worker
    # sends mail again within seconds.
    wait_until(lambda: all_sent(service), timeout=5, what="mails to be sent again")
    assert_health(service, status="ok", redis="ok")
    assert service.unavailable_count("redis") >= len(refused)


def test_redis_frozen(redis_server, service):
    """A Redis that accepts connections and never answers: every answer within a few
    REDIS_TIMEOUT_SECONDS, then as when it is stopped."""
    stop = threading.Event()

    def keep_asking(mail: bool) -> list[Answer]:
        answers = []
        while not stop.is_set():
            # Waiting longer would only tell how long a hang lasts.
            ask = mail_requests if mail else served_requests
            answers += ask(service, timeout=BOUND + 7)
        return answers

    redis_server.freeze()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(keep_asking, mail) for mail in (False, False, False, True)]
            time.sleep(8)
            health = service.health(timeout=BOUND + 7)
            stop.set()
            answers = [answer for future in futures for answer in future.result()]
    finally:
        redis_server.thaw()

    slow = [answer for answer in answers if answer.seconds >= BOUND]
    assert not slow, f"{len(slow)} of {len(answers)} answers took {BOUND} s or more: {slow[:10]}"
    for answer in answers:
        if answer.kind in ("request_token", "store_invite"):
            assert answer.is_unavailable(), (answer, answer.body, answer.retry_after)
        else:
            assert answer.status == 200, (answer, answer.body)
    assert health.seconds < BOUND, health
    assert health.status == 200, health.body
    fields = ("status", "database", "redis")
    assert [health.body.get(key) for key in fields] == ["degraded", "ok", "unreachable"]
    wait_until(lambda: all_sent(service), timeout=5, what="mails to be sent again")
