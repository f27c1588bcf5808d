"""PostgreSQL stopped, frozen and restarted under load, with the service under gunicorn
(issue 21): what needs the database answers 503 with Retry-After within a bounded
time, never a 500; the rest keeps serving; nothing acknowledged is lost; one warning
per outage, no traceback."""

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from testing.processes import wait_until
from tests.faults.client import Answer
from tests.faults.client import Service
from tests.faults.client import new_address
from tests.faults.client import warnings_about
from tests.helpers import code_from_mail

pytestmark = pytest.mark.faults

KNOWN_MXID = "@known:agent.dinum.tchap.gouv.fr"
# Lower than the defaults, so that the frozen server's test is short; each answer must
# come within a few of them (a pre-ping, a reconnection).
TIMEOUT = 2
TIMEOUTS = {
    "DATABASE_CONNECT_TIMEOUT_SECONDS": str(TIMEOUT),
    "DATABASE_STATEMENT_TIMEOUT_SECONDS": str(TIMEOUT),
    "DATABASE_POOL_TIMEOUT_SECONDS": str(TIMEOUT),
}
BOUND = 3 * TIMEOUT
# How long after PostgreSQL answers again every request must be served again.
RECOVERY = 5


@pytest.fixture
def service(cluster, database, redis, serve, smtp) -> tuple[Service, str]:
    """The service on the cluster with Redis limits, an address bound: (service, address).

    A mail slot per thread: the load's clients send several requestTokens to a worker at
    once, which beyond MAIL_MAX_CONCURRENT would fail at once (M_EMAIL_SEND_ERROR), the
    mail server's health whatever; here only the database is at fault.

    Eight threads a worker: the load's seven clients then always find a free thread,
    whichever worker accepts them, and each answer's time is its own timeouts. With four,
    a worker that accepts five of them queues the fifth behind a request blocked for a
    timeout (the likely cause of one 7.0 s answer against the 6 s bound, seen once).
    """
    service = serve(database, token=cluster.token, RATELIMIT_STORAGE_URI=redis,
                    MAIL_MAX_CONCURRENT="8", THREADS="8", **TIMEOUTS)  # fmt: skip
    known = new_address("known")
    service.bound(smtp, known, KNOWN_MXID)
    service.pepper()
    return service, known


def database_requests(service: Service, known: str, **options) -> list[Answer]:
    """One of each request that needs the database."""
    return [
        service.lookup_v1(known, **options),
        service.lookup_v2([known], **options),
        service.request_token(new_address(), **options),
    ]


def assert_serving(service: Service, known: str) -> None:
    v1, v2, request_token = database_requests(service, known)
    assert v1.status == 200 and v1.body.get("mxid") == KNOWN_MXID, v1.body
    assert v2.status == 200 and v2.body["mappings"] == {f"{known} email": KNOWN_MXID}, v2.body
    assert request_token.status == 200, request_token.body


def assert_quiet_log(lines: list[str], *, workers: int = 3) -> None:
    """No traceback; a warning about the database, at most two per worker."""
    text = "\n".join(lines)
    assert "Traceback" not in text, text[-3000:]
    warnings = warnings_about(lines, "database")
    assert 1 <= len(warnings) <= 2 * workers, warnings


def test_postgres_stopped(cluster, service):
    service, known = service
    assert_serving(service, known)
    offset = len(service.log())
    cluster.stop()
    answers: list[Answer] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answers += [service.status(), *database_requests(service, known), service.health()]
    lines = service.log_lines_since(offset)
    cluster.start()

    kinds = Counter(answer.kind for answer in answers)
    assert kinds["status"] >= 3, answers
    for answer in answers:
        if answer.kind == "status":
            assert answer.status == 200, answer
        elif answer.kind == "health":
            assert answer.status == 503 and answer.errcode == "M_UNKNOWN", answer.body
            assert answer.body["database"] == "unreachable", answer.body
        else:
            assert answer.is_unavailable(), (answer, answer.body, answer.retry_after)
    assert_quiet_log(lines)

    wait_until(lambda: service.lookup_v1(known).status == 200, timeout=RECOVERY,
               what="lookups to be served again")  # fmt: skip
    assert_serving(service, known)
    unavailable = sum(1 for answer in answers if answer.kind not in ("status", "health"))
    assert service.unavailable_count("database") >= unavailable


def test_postgres_frozen(cluster, service):
    """SIGSTOP on the postmaster and every backend: connections are accepted by the
    kernel and never answered, statements in flight never end. Every request that needs
    the database answers 503 within a few timeouts; the status endpoint keeps answering."""
    service, known = service
    assert_serving(service, known)
    offset = len(service.log())
    stop = threading.Event()

    def keep_asking(kind: int) -> list[Answer]:
        answers = []
        while not stop.is_set():
            if kind == 0:
                answers.append(service.status())
                time.sleep(0.2)
            else:
                # Waiting longer would only tell how long a hang lasts.
                answers += database_requests(service, known, timeout=BOUND + 4)
        return answers

    cluster.freeze()
    try:
        with ThreadPoolExecutor(max_workers=7) as pool:
            futures = [pool.submit(keep_asking, kind) for kind in range(7)]
            time.sleep(12)
            health = service.health(timeout=BOUND + 4)
            stop.set()
            answers = [answer for future in futures for answer in future.result()]
    finally:
        lines = service.log_lines_since(offset)
        cluster.thaw()

    slow = [answer for answer in answers if answer.seconds >= BOUND]
    assert not slow, f"{len(slow)} of {len(answers)} answers took {BOUND} s or more: {slow[:10]}"
    for answer in answers:
        if answer.kind == "status":
            assert answer.status == 200, answer
        else:
            assert answer.is_unavailable(), (answer, answer.body, answer.retry_after)
    assert Counter(answer.kind for answer in answers)["request_token"] >= 6
    assert_quiet_log(lines)
    assert health.seconds < BOUND, health
    assert (health.status, health.body.get("database")) == (503, "unreachable"), health.body
    wait_until(lambda: service.lookup_v1(known).status == 200, timeout=RECOVERY,
               what="lookups to be served again")  # fmt: skip
    assert_serving(service, known)


class Load:
    """Clients sending a mix of requests until told to stop: status, v1 and v2 lookups,
    and the whole way from requestToken to bind. Keeps every answer, and the sessions
    and bindings the service acknowledged."""

    def __init__(self, service: Service, smtp, known: str, *, writes: bool = True) -> None:
        self.service, self.smtp, self.known, self.writes = service, smtp, known, writes
        self.answers: list[Answer] = []
        self.acknowledged_sids: list[str] = []
        self.acknowledged_binds: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def client(self, number: int) -> None:
        service, turn = self.service, 0
        while not self.stop.is_set():
            turn += 1
            answers = [service.status(), service.lookup_v1(self.known),
                       service.lookup_v2([self.known])]  # fmt: skip
            if self.writes and turn % 2 == 0:
                answers += self._validate_and_bind(f"load{number}x{turn}")
            with self._lock:
                self.answers += answers

    def _validate_and_bind(self, name: str) -> list[Answer]:
        service, address = self.service, new_address(name)
        requested = service.request_token(address)
        if requested.status != 200:
            return [requested]
        sid = requested.body["sid"]
        with self._lock:
            self.acknowledged_sids.append(sid)
        submitted = service.submit_token(sid, code_from_mail(self.smtp.to(address)[-1]))
        if submitted.status != 200:
            return [requested, submitted]
        mxid = f"@{name}:agent.dinum.tchap.gouv.fr"
        bound = service.bind(sid, mxid)
        if bound.status == 200:
            with self._lock:
                self.acknowledged_binds.append((address, mxid))
        return [requested, submitted, bound]

    def run(self, clients: int, during) -> None:
        """Run `clients` clients while `during()` runs, then stop them."""
        with ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [pool.submit(self.client, number) for number in range(clients)]
            try:
                during()
            finally:
                self.stop.set()
                for future in futures:
                    future.result()


def test_postgres_restarted_under_load(cluster, database, service, smtp):
    """A few thousand requests while PostgreSQL stops and starts again: 503 with
    Retry-After during the outage only, every request served again soon after, and every
    acknowledged session and binding in the database afterwards."""
    service, known = service
    load = Load(service, smtp, known)
    times: dict[str, float] = {}

    def restart() -> None:
        time.sleep(3)
        times["stopped"] = time.monotonic()
        cluster.stop()
        time.sleep(3)
        cluster.start()
        times["back"] = time.monotonic()
        time.sleep(RECOVERY + 4)

    load.run(8, restart)

    answers = load.answers
    assert len(answers) >= 1000, f"only {len(answers)} requests"  # about 1,500 on 2 cores
    failed = [answer for answer in answers if answer.status is None]
    assert not failed, f"{len(failed)} requests got no answer: {failed[:10]}"
    errors = [answer for answer in answers if answer.status >= 500 and not answer.is_unavailable()]
    logged = [line for line in service.log().splitlines() if '"level": "ERROR"' in line]
    assert not errors, (
        f"{len(errors)} errors other than 503: "
        + ", ".join(
            f"{answer!r} {answer.started - times['stopped']:+.1f} s after the stop"
            for answer in errors[:10]
        )
        + "; the service logged: "
        + " | ".join(line[:1500] for line in logged[:3])
    )
    unexpected = [answer for answer in answers if 300 <= answer.status < 500]
    assert not unexpected, unexpected[:10]
    early = [
        answer for answer in answers
        if answer.status != 200 and answer.started + answer.seconds < times["stopped"]
    ]  # fmt: skip
    assert not early, f"not served before the outage: {early[:10]}"
    late = [
        answer for answer in answers
        if answer.status != 200 and answer.started > times["back"] + RECOVERY
    ]  # fmt: skip
    assert not late, f"not served {RECOVERY} s after the restart: {late[:10]}"
    assert any(answer.is_unavailable() for answer in answers), "the outage went unnoticed"

    with cluster.connect(database.rsplit("/", 1)[1]) as connection:
        sids = {sid for (sid,) in connection.execute("SELECT sid FROM validation_session")}
        binds = set(connection.execute("SELECT address, mxid FROM association"))
    lost = [sid for sid in load.acknowledged_sids if sid not in sids]
    assert not lost, f"{len(lost)} acknowledged sessions lost"
    assert load.acknowledged_binds, "no binding was acknowledged"
    lost_binds = [bind for bind in load.acknowledged_binds if bind not in binds]
    assert not lost_binds, f"{len(lost_binds)} acknowledged bindings lost"


def test_reload_under_load_after_an_outage(cluster, service, smtp):
    """PostgreSQL back after an outage, then SIGHUP under load: no request fails."""
    service, known = service
    cluster.stop()
    time.sleep(2)
    cluster.start()
    wait_until(lambda: service.lookup_v1(known).status == 200, timeout=RECOVERY,
               what="lookups to be served again")  # fmt: skip
    load = Load(service, smtp, known, writes=False)

    def reload() -> None:
        time.sleep(1)
        service.server.signal(signal.SIGHUP)
        time.sleep(8)

    load.run(6, reload)
    statuses = Counter(answer.status for answer in load.answers)
    assert statuses == {200: len(load.answers)}, statuses
    assert len(load.answers) > 100
