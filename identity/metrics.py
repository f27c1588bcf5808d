"""Prometheus counters and histograms, served at GET /metrics (identity/api/metrics.py).

Counters and histograms are kept by each process; under gunicorn, set the
PROMETHEUS_MULTIPROC_DIR environment variable (gunicorn.conf.py does) so that
every worker's values are added up at scrape time.
"""

import atexit
import bisect
import os
import signal
import threading
import time

from prometheus_client import Counter
from prometheus_client import Histogram

REQUESTS = Counter(
    "identity_requests_total", "HTTP requests answered", ["endpoint", "method", "status"]
)
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENCY = Histogram(
    "identity_request_duration_seconds",
    "Time to answer an HTTP request",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
MAILS = Counter("identity_mails_total", "Mails handed to the SMTP server", ["outcome"])
INVITATIONS_STORED = Counter("identity_invitations_stored_total", "Invitations stored")
INVITATIONS_DELIVERED = Counter(
    "identity_invitations_delivered_total", "Invitations delivered to homeservers (onbind)"
)
INVITATION_REMINDERS = Counter(
    "identity_invitation_reminders_total",
    "Invitation reminders attempted, by outcome (sent, failed, given up)",
    ["outcome"],
)
INVITATIONS_REFUSED = Counter(
    "identity_invitations_refused_total",
    "store-invite requests refused because the guest refused or the sender was reported",
    ["reason"],
)
GUEST_CHOICES = Counter(
    "identity_guest_choices_total",
    "Refusals, reports and lifted refusals recorded from guests' pages and mails",
    ["choice"],
)


class AnswerTally:
    """The answers of this process, added up here and written to `REQUESTS` and
    `LATENCY` at most a second later, and before each scrape (`flush`).

    Written one by one, each answer cost three writes to the process's metrics file,
    each under prometheus_client's lock: 9 µs, a twentieth of a small request. Added up,
    a second's answers cost one write per route and outcome. The writing thread starts
    with the process's first answer (after gunicorn's fork), and the process's last
    counts are written as it exits; a worker killed outright loses at most its last
    second of counts. A forked child starts with nothing pending: what its parent added
    (gunicorn's master answers its warm-up requests) is the parent's to write.
    """

    FLUSH_SECONDS = 1.0
    _BOUNDS = (*LATENCY_BUCKETS, float("inf"))

    def __init__(self) -> None:
        self._start_afresh()
        os.register_at_fork(after_in_child=self._start_afresh)

    def _start_afresh(self) -> None:
        # In a forked child too: the parent's lock may have been held by one of the
        # threads a child does not have, and its writing thread is not the child's.
        self._lock = threading.Lock()
        # (endpoint, method, status) → answers; endpoint → [seconds summed, per bucket…]
        self._answers: dict[tuple[str, str, str], int] = {}
        self._times: dict[str, list[float]] = {}
        self._writing = False

    def add(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        bucket = bisect.bisect_left(self._BOUNDS, seconds)  # the first bound ≥ seconds
        with self._lock:
            if not self._writing:
                self._start_writer()
            key = (endpoint, method, status)
            self._answers[key] = self._answers.get(key, 0) + 1
            times = self._times.get(endpoint)
            if times is None:
                times = self._times[endpoint] = [0.0] * (len(self._BOUNDS) + 1)
            times[0] += seconds
            times[1 + bucket] += 1

    def flush(self) -> None:
        """Write what was added since the last flush."""
        with self._lock:
            answers, self._answers = self._answers, {}
            times, self._times = self._times, {}
        for labels, count in answers.items():
            REQUESTS.labels(*labels).inc(count)
        for endpoint, (total, *counts) in times.items():
            # What `observe` writes, one value at a time: the sum and each bucket.
            latency = LATENCY.labels(endpoint)
            latency._sum.inc(total)
            for bucket, hits in zip(latency._buckets, counts, strict=True):
                if hits:
                    bucket.inc(hits)

    def _start_writer(self) -> None:
        """Under the lock: this process's writing thread."""
        self._writing = True
        threading.Thread(target=self._write_every_second, daemon=True, name="metrics").start()

    def _write_every_second(self) -> None:
        # Signals are the main thread's: a SIGHUP the process sends itself (domains.yaml
        # reloaded at once) is then handled before kill() returns, not when this wakes.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            time.sleep(self.FLUSH_SECONDS)
            self.flush()


ANSWERS = AnswerTally()
atexit.register(ANSWERS.flush)
