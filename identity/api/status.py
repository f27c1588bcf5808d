"""Version and status endpoints."""

from flask import Blueprint

bp = Blueprint("status", __name__, url_prefix="/_matrix/identity")

# The specification versions whose Identity Service API we implement.
SUPPORTED_VERSIONS = [
    "r0.1.0",
    "r0.2.0",
    "r0.2.1",
    "r0.3.0",
    "v1.1",
    "v1.2",
    "v1.3",
    "v1.4",
    "v1.5",
    "v1.6",
    "v1.7",
    "v1.8",
    "v1.9",
    "v1.10",
    "v1.11",
    "v1.12",
    "v1.13",
    "v1.14",
    "v1.15",
    "v1.16",
    "v1.17",
    "v1.18",
]


@bp.get("/versions")
def versions():
    return {"versions": SUPPORTED_VERSIONS}


@bp.get("/v2")
@bp.get("/api/v1")
def status():
    return {}
