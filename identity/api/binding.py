"""Binding endpoints (filled in by its owner)."""

from flask import Blueprint

bp = Blueprint("binding", __name__, url_prefix="/_matrix/identity")
