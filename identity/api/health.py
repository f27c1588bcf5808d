"""GET /health, for load balancers and monitoring."""

from flask import Blueprint

from identity import health as checks
from identity import routing

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """200 while the service can answer, 503 M_UNKNOWN when its database cannot."""
    return checks.check(routing.source())
