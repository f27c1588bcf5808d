"""The HTTP API: blueprints, error handlers and the CORS hook."""

from flask import Flask
from flask import Response

from identity.api import account
from identity.api import binding
from identity.api import health
from identity.api import info
from identity.api import internal
from identity.api import invitations
from identity.api import keys
from identity.api import status
from identity.api import validation
from identity.api.errors import register_error_handlers

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
]

# The CORS headers the identity specification recommends on every response.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Origin, X-Requested-With, Content-Type, Accept, Authorization",
}


def register_api(app: Flask) -> None:
    # Views serve several paths (v1 and v2 twins): never redirect between them.
    app.url_map.redirect_defaults = False
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    register_error_handlers(app)
    app.after_request(add_cors_headers)


def add_cors_headers(response: Response) -> Response:
    response.headers.update(CORS_HEADERS)
    return response
