"""GET /metrics: requests, latency, mails, invitations, the delivery queue, domains.yaml."""

import os
import re
import threading
import time

from tests.helpers import V1
from tests.helpers import validate_address


def value(text: str, name: str, **labels: str) -> float:
    """A sample's value in the Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            found = ",".join(sorted(match.group(2).split(","))) if match.group(2) else ""
            if found == wanted:
                return float(match.group(3))
    return 0.0


def test_metrics(client, smtp, clock, fake_homeserver):
    before = client.get("/metrics").text
    endpoint = "/_matrix/identity/api/v1/info"
    client.get(f"{V1}/info", query_string={"medium": "email", "address": "a@ac-versailles.fr"})
    client.get(f"{V1}/info", query_string={"medium": "email"})
    invite = {
        "medium": "email",
        "address": "claire@partenaire.example",
        "room_id": "!r:agent.dinum.tchap.gouv.fr",
        "sender": "@marie:agent.dinum.tchap.gouv.fr",
    }
    assert client.post(f"{V1}/store-invite", json=invite).status_code == 200
    sid = validate_address(client, smtp, "claire@partenaire.example", secret="m")
    body = {"sid": sid, "client_secret": "m", "mxid": fake_homeserver.user_id("claire")}
    assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    clock.advance(minutes=5)

    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.text

    def grew(name, by, **labels):
        assert value(text, name, **labels) - value(before, name, **labels) == by, name

    grew("identity_requests_total", 1, endpoint=endpoint, method="GET", status="200")
    grew("identity_requests_total", 1, endpoint=endpoint, method="GET", status="400")
    grew("identity_request_duration_seconds_count", 2, endpoint=endpoint)
    grew("identity_mails_total", 2, outcome="sent")  # the invitation and the code
    grew("identity_invitations_stored_total", 1)
    assert value(text, "identity_delivery_queue_depth") == 1
    assert value(text, "identity_delivery_queue_oldest_age_seconds") == 300
    assert value(text, "identity_domains_ok") == 1
    assert value(text, "identity_domains_rules") > 50
    # Paths never appear, only route templates: no address or token in a label.
    assert "claire" not in text and "partenaire" not in text


def _samples(registry, name: str) -> dict[tuple, float]:
    """The samples of the metric `name` in `registry`: (sample name, labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _delta(after: dict, before: dict) -> dict:
    return {key: value - before.get(key, 0) for key, value in after.items()
            if value != before.get(key, 0)}  # fmt: skip


def test_the_tally_writes_what_observing_each_answer_would():
    """Added up then written, the answers give the samples one `observe` and one `inc`
    per answer give (prometheus_client's histogram is written through its parts)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import Histogram
    from prometheus_client.registry import REGISTRY

    from identity.metrics import ANSWERS
    from identity.metrics import LATENCY_BUCKETS

    reference = CollectorRegistry()
    observed = Histogram("identity_request_duration_seconds", "t", ["endpoint"],
                         buckets=LATENCY_BUCKETS, registry=reference)  # fmt: skip
    # Below, on and between bounds, beyond the last one, and zero.
    times = [0.0, 0.001, 0.0025, 0.003, 0.05, 0.7, 2.5, 9.99, 10, 11, 600]
    ANSWERS.flush()
    before = _samples(REGISTRY, "identity_request_duration_seconds")
    counted = _samples(REGISTRY, "identity_requests")
    for seconds in times:
        ANSWERS.add("/tally-test", "GET", "200", seconds)
        observed.labels("/tally-test").observe(seconds)
    ANSWERS.add("/tally-test", "POST", "429", 0.01)
    observed.labels("/tally-test").observe(0.01)
    ANSWERS.flush()

    written = _delta(_samples(REGISTRY, "identity_request_duration_seconds"), before)
    expected = _samples(reference, "identity_request_duration_seconds")
    assert written.keys() == expected.keys()
    assert all(abs(written[key] - expected[key]) < 1e-9 for key in expected), written
    assert _delta(_samples(REGISTRY, "identity_requests"), counted) == {
        ("identity_requests_total",
         (("endpoint", "/tally-test"), ("method", "GET"), ("status", "200"))): len(times),
        ("identity_requests_total",
         (("endpoint", "/tally-test"), ("method", "POST"), ("status", "429"))): 1,
    }  # fmt: skip


def test_the_tally_loses_no_answer_to_threads_nor_to_its_writer():
    """Eight threads adding at once while the writer thread flushes every millisecond."""
    from prometheus_client.registry import REGISTRY

    from identity.metrics import ANSWERS

    ANSWERS.flush()
    before = _samples(REGISTRY, "identity_requests")
    key = ("identity_requests_total",
           (("endpoint", "/tally-threads"), ("method", "GET"), ("status", "200")))  # fmt: skip

    def add(_):
        for _ in range(5_000):
            ANSWERS.add("/tally-threads", "GET", "200", 0.001)

    original = ANSWERS.FLUSH_SECONDS
    ANSWERS.FLUSH_SECONDS = 0.001
    try:
        threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        ANSWERS.FLUSH_SECONDS = original
    ANSWERS.flush()
    assert _delta(_samples(REGISTRY, "identity_requests"), before)[key] == 40_000


def test_a_forked_process_writes_its_own_answers_not_its_parents():
    """gunicorn forks workers from a master that answered its warm-up requests, perhaps
    not yet written: the child writes only its own answers, with its own thread."""
    from identity.metrics import ANSWERS
    from identity.metrics import REQUESTS

    ANSWERS.add("/tally-fork", "GET", "200", 0.001)  # pending in the parent
    counter = REQUESTS.labels("/tally-fork", "GET", "200")

    def own_answer() -> float:  # one answer of its own, written by its own thread
        start = counter._value.get()
        ANSWERS.add("/tally-fork", "GET", "200", 0.001)
        deadline = time.monotonic() + 5
        while counter._value.get() == start and time.monotonic() < deadline:
            time.sleep(0.05)
        return counter._value.get() - start

    assert _in_child(own_answer) == b"1.0"
    ANSWERS.flush()
    assert counter._value.get() >= 1  # the parent's own, written by the parent


def test_a_forked_process_scraped_first_writes_none_of_its_parents_answers():
    """gunicorn's master answers its warm-up requests, then forks the workers before its
    writer wrote them: a worker whose first request is a scrape (/metrics writes what is
    pending first) must not write the master's answers as its own."""
    from identity.metrics import ANSWERS
    from identity.metrics import REQUESTS

    ANSWERS.add("/tally-fork-scraped", "GET", "200", 0.001)  # pending in the parent
    counter = REQUESTS.labels("/tally-fork-scraped", "GET", "200")

    def scrape_first() -> float:  # a scrape before any answer of its own
        start = counter._value.get()
        ANSWERS.flush()
        return counter._value.get() - start

    assert _in_child(scrape_first) == b"0.0"
    ANSWERS.flush()
    assert counter._value.get() >= 1  # the parent's own, written by the parent


def _in_child(run) -> bytes:
    """What `run()` returns in a forked child, as the child wrote it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, str(run()).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    written = os.read(read, 100)
    os.close(read)
    return written
