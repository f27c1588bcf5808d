"""The one place where failures become Matrix error responses."""

import logging

from flask import Flask
from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError

from identity import outages
from identity.errors import MatrixError
from identity.errors import Unavailable
from identity.services import services

logger = logging.getLogger(__name__)

# Werkzeug's HTTP errors, as the identity specification names them.
_HTTP_ERRCODES = {
    404: "M_UNRECOGNIZED",
    405: "M_UNRECOGNIZED",
    413: "M_TOO_LARGE",
    429: "M_LIMIT_EXCEEDED",
}


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(MatrixError, render_matrix_error)
    app.register_error_handler(InternalServerError, render_internal_error)
    app.register_error_handler(HTTPException, render_http_error)
    app.register_error_handler(Exception, render_outage)


def render_matrix_error(e: MatrixError):
    if e.status == 503:
        retry_after = services().settings.unavailable_retry_after_seconds
        return e.to_json(), e.status, {"Retry-After": str(retry_after)}
    return e.to_json(), e.status


def render_outage(e: Exception):
    """A dependency that cannot answer (outages.py): 503 with Retry-After, one warning
    per outage. Any other exception goes on to the 500 path (or to a test)."""
    dependency = outages.unavailable_dependency(e)
    if dependency is None:
        raise e
    outages.report(dependency, e)
    return render_matrix_error(Unavailable(f"The {dependency} is unavailable, try again shortly"))


def render_http_error(e: HTTPException):
    """Turn Werkzeug's HTML error page into a Matrix error, written as every other one,
    keeping its headers (Allow on 405, Retry-After on 429)."""
    status = e.code or 500
    errcode = _HTTP_ERRCODES.get(status, "M_UNKNOWN")
    if status in (404, 405):
        message = "Unrecognized request"
    elif status == 413 and request.max_content_length is not None:
        message = f"Request too large: at most {request.max_content_length} bytes here"
    else:
        message = e.description or e.name
    headers = [(name, value) for name, value in e.get_headers() if name.lower() != "content-type"]
    return {"errcode": errcode, "error": message}, status, headers


def render_internal_error(e: InternalServerError):
    # Outside TESTING, Flask hands unexpected exceptions here: log the cause, show nothing.
    logger.error("Unhandled error", exc_info=e.original_exception or e)
    return {"errcode": "M_UNKNOWN", "error": "Internal server error"}, 500
