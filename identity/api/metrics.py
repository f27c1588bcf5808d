"""GET /metrics, and the request counters every response updates.

What the database or the routing table knows (queue depth, oldest job, domains.yaml
status) is read at scrape time, so every instance reports the same truth; the counters
themselves live in identity/metrics.py.
"""

import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import request
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY
from prometheus_client.registry import Collector

from identity.metrics import LATENCY
from identity.metrics import REQUESTS
from identity.routing import RoutingSource
from identity.services import services
from identity.storage import deliveries
from identity.wsgi import STARTED

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
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
    app.after_request(_count)


# (route, method, status) → its request counter and latency histogram. `labels()`
# validates and locks on every call; the children never change, so look each up once.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _count(response: Response) -> Response:
    # The route's template, never the path: paths may hold tokens.
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    key = (endpoint, request.method, response.status_code)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (
            REQUESTS.labels(endpoint, request.method, str(response.status_code)),
            LATENCY.labels(endpoint),
        )
    requests, latency = children
    requests.inc()
    started = request.environ.get(STARTED)  # set by the response envelope
    if started is not None:
        latency.observe(time.perf_counter() - started)
    return response
