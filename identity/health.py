"""Whether this instance can answer: its database and schema, Redis, its domains file."""

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from identity.errors import Unhealthy
from identity.limits import Limits
from identity.routing import RoutingSource
from identity.storage.schema import CURRENT
from identity.storage.schema import Revisions
from identity.storage.schema import applied_revisions


def check(routing: RoutingSource, revisions: Revisions, limits: Limits) -> dict[str, Any]:
    """The health report: ok while the database answers with the code's schema.

    Redis down leaves the instance useful (its limits fail open, identity.limits): it
    is reported, as "degraded", but a load balancer keeps sending traffic. A refused
    domains.yaml edit is reported too (the last good rules keep serving).

    :raises MatrixError: 503 M_UNKNOWN (Unhealthy) when the database is unreachable or
        its schema is not the code's, with the same report.
    """
    report: dict[str, Any] = {"redis": limits.store_state(), "domains": routing.status().to_json()}
    try:
        report["schema"] = revisions.state_of(applied_revisions())
    except SQLAlchemyError:
        raise Unhealthy("The database is unreachable", database="unreachable", **report) from None
    report["database"] = "ok"
    if report["schema"] != CURRENT:
        raise Unhealthy(f"The database schema is {report['schema']} the code's", **report)
    status = "degraded" if report["redis"] == "unreachable" else "ok"
    return {"status": status, **report}
