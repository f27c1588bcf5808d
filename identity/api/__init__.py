"""The HTTP API: blueprints, error handlers and the rate-limit hook."""

from flask import Flask

from identity.api import account
from identity.api import binding
from identity.api import health
from identity.api import info
from identity.api import internal
from identity.api import invitations
from identity.api import keys
from identity.api import status
from identity.api import validation
from identity.api import well_known
from identity.api.auth import limit_request
from identity.api.errors import register_error_handlers
from identity.api.http import this_request

# Blueprints of the Identity Service API, all under /_matrix/identity.
BLUEPRINTS = [
    status.bp,
    account.bp,
    validation.bp,
    binding.bp,
    keys.bp,
    invitations.bp,
    info.bp,
    internal.bp,
    health.bp,
    well_known.bp,
]

API_PREFIX = "/_matrix/identity/"
INTERNAL_PREFIX = "/_matrix/identity/internal/"


def register_api(app: Flask) -> None:
    # Views serve several paths (v1 and v2 twins): never redirect between them.
    app.url_map.redirect_defaults = False
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    register_error_handlers(app)
    app.before_request(limit_api_requests)


def limit_api_requests() -> None:
    """Count every API request against its user or its client IP (`limit_request`).

    The internal API (/_matrix/identity/internal/) answers trusted callers only and is
    not limited.
    """
    # The environ read once (see `this_request`), the path as
    # Flask routes it: "//_matrix/…" reaches the same view as "/_matrix/…".
    environ = this_request().environ
    path = "/" + environ.get("PATH_INFO", "").lstrip("/")
    if environ.get("REQUEST_METHOD", "").upper() == "OPTIONS" or not path.startswith(API_PREFIX):
        return
    if path.startswith(INTERNAL_PREFIX):
        return
    limit_request(environ)
