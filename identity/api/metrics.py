"""GET /metrics, and the request counters every response updates.

What the database or the routing table knows (queue depth, oldest job, domains.yaml
status) is read at scrape time, so every instance reports the same truth; the counters
themselves live in identity/metrics.py.
"""

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint
from flask import Flask
from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY
from prometheus_client.registry import Collector

from identity.metrics import ANSWERS
from identity.routing import RoutingSource
from identity.services import services
from identity.storage import deliveries

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    ANSWERS.flush()  # this process's latest answers; other workers' are a second old at most
    # Our counters: every worker's added up, or this process's own registry.
    counters = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
    state = CollectorRegistry()
    current = services()
    state.register(_StateCollector(current.clock.now(), current.routing))
    # Two expositions one after the other are one valid exposition.
    return Response(
        generate_latest(counters) + generate_latest(state), mimetype=CONTENT_TYPE_LATEST
    )


class _StateCollector(Collector):
    """Gauges read at scrape time from the database and the routing table."""

    def __init__(self, now: datetime, routing: RoutingSource) -> None:
        self.now = now
        self.routing = routing

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, oldest = deliveries.queue_state()
        yield GaugeMetricFamily(
            "identity_delivery_queue_depth", "Invitations waiting to reach homeservers", depth
        )
        age = (self.now - oldest).total_seconds() if oldest is not None else 0
        yield GaugeMetricFamily(
            "identity_delivery_queue_oldest_age_seconds", "Age of the oldest waiting delivery", age
        )
        status = self.routing.status()
        yield GaugeMetricFamily(
            "identity_domains_ok",
            "1 when domains.yaml on disk is the version served",
            1 - bool(status.error),
        )
        yield GaugeMetricFamily("identity_domains_rules", "Routing rules served", status.rules)
        yield GaugeMetricFamily(
            "identity_domains_loaded_timestamp_seconds",
            "When the served rules were loaded",
            status.loaded_at,
        )


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def count_answer(environ: dict[str, Any], status: str, seconds: float) -> None:
    """Count an answered request and its time (the response envelope's observer)."""
    # The route's template, never the path: paths may hold tokens. Flask's request
    # (werkzeug keeps it in the environ until the request ends) knows which rule matched.
    rule = getattr(environ.get("werkzeug.request"), "url_rule", None)
    endpoint = rule.rule if rule is not None else "unmatched"
    ANSWERS.add(endpoint, environ.get("REQUEST_METHOD", ""), status[:3], seconds)
