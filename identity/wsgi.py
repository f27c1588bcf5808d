"""What every response carries, added around the Flask app: a WSGI middleware.

Each request gets an id for its log lines (the proxy's X-Request-ID when sane, else
our own), and each response echoes it, with the CORS headers the identity
specification recommends on every response. The headers are appended to the list
handed to the server: set one by one on each Response object, with one hook each,
they were a tenth of a status request's time (docs/performance.md).
"""

import itertools
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

from flask import request

# The CORS headers the identity specification recommends on every response.
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Origin, X-Requested-With, Content-Type, Accept, Authorization",
    ),
)

REQUEST_ID = "identity.request_id"  # environ keys
STARTED = "identity.started"
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ResponseEnvelope:
    """Wraps a WSGI app: request id and start time in the environ, headers on the way out."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.ids = _RequestIds()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        environ[STARTED] = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if incoming and _SANE_ID.match(incoming) else self.ids.next()
        environ[REQUEST_ID] = request_id
        added = [*CORS_HEADERS, ("X-Request-ID", request_id)]

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, headers + added, exc_info)

        return self.app(environ, start)


def current_request_id() -> str:
    """The id of the request being handled ("-" when the envelope did not see it)."""
    return request.environ.get(REQUEST_ID, "-")


class _RequestIds:
    """A random prefix drawn once per process and a counter: unique, 16 hex digits,
    without a call to the system's random source per request (an id names a request,
    it guards nothing)."""

    def __init__(self) -> None:
        self._pid = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            if self._pid != os.getpid():  # a forked worker draws its own prefix
                self._pid = os.getpid()
                self._prefix = secrets.token_hex(5)
                self._counter = itertools.count(secrets.randbelow(1 << 20))
            return f"{self._prefix}{next(self._counter) % (1 << 24):06x}"
