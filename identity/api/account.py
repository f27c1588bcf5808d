"""Account endpoints (filled in by its owner)."""

from flask import Blueprint

bp = Blueprint("account", __name__, url_prefix="/_matrix/identity")
