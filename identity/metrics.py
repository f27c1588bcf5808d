"""Prometheus counters and histograms, served at GET /metrics (identity/api/metrics.py).

Counters and histograms are kept by each process; under gunicorn, set the
PROMETHEUS_MULTIPROC_DIR environment variable (gunicorn.conf.py does) so that
every worker's values are added up at scrape time.
"""

from prometheus_client import Counter
from prometheus_client import Histogram

REQUESTS = Counter(
    "identity_requests_total", "HTTP requests answered", ["endpoint", "method", "status"]
)
LATENCY = Histogram(
    "identity_request_duration_seconds",
    "Time to answer an HTTP request",
    ["endpoint"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
