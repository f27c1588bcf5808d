"""Whether this instance can answer: its database, and its domains file."""

from typing import Any

from identity.errors import Unhealthy
from identity.routing import RoutingSource
from identity.storage.health import database_reachable


def check(routing: RoutingSource) -> dict[str, Any]:
    """The health report: ok while the database answers.

    A refused domains.yaml edit is reported (the last good rules keep serving) but
    does not make the instance unhealthy.

    :raises MatrixError: 503 M_UNKNOWN (Unhealthy) when the database is unreachable.
    """
    domains = routing.status().to_json()
    if not database_reachable():
        raise Unhealthy("The database is unreachable", database="unreachable", domains=domains)
    return {"status": "ok", "database": "ok", "domains": domains}
