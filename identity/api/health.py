"""GET /health, for load balancers and monitoring."""

from flask import Blueprint

from identity import health as checks
from identity.services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """200 while the service can answer, 503 M_UNKNOWN when its database cannot (or
    has another schema than the code's)."""
    current = services()
    return checks.check(current.routing, current.revisions, current.limits)
