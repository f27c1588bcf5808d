"""GET /health, for load balancers and monitoring."""

from flask import Blueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from identity import routing
from identity.errors import Unhealthy
from identity.extensions import db

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """200 while the service can answer. A refused domains.yaml edit is reported (the
    last good rules keep serving) but does not take the instance out of rotation."""
    domains = routing.source().status().to_json()
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        raise Unhealthy(
            "The database is unreachable", database="unreachable", domains=domains
        ) from None
    return {"status": "ok", "database": "ok", "domains": domains}
