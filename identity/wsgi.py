"""How the app meets the WSGI server: the Flask class it is, and what every response carries.

`Application` is Flask for a busy API (JSON answers by orjson, hooks and views checked
once for coroutines). `ResponseEnvelope`, a WSGI middleware, gives each request an id
for its log lines (the proxy's X-Request-ID when sane, else our own), and each response
echoes it, with the headers its kind calls for (identity.headers: a browser's
protections on HTML pages, CORS on the JSON API, nosniff on all). The headers are
appended to the list handed to the server: set one by one on each Response object, with
one hook each, they were a tenth of a status request's time (docs/performance.md). It
also hands each answer's status and time to an observer (the request metrics): read
from the environ here, they cost a fifth of what a Flask hook reading them did.
"""

import contextlib
import itertools
import os
import re
import secrets
import time
import typing
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from inspect import iscoroutinefunction
from typing import Any

import orjson
from flask import Flask
from flask import Request
from flask import current_app
from flask.json.provider import DefaultJSONProvider
from werkzeug.datastructures import Headers
from werkzeug.sansio.response import Response as BaseResponse

from identity.headers import ResponseHeaders
from identity.logs import REQUEST_ID

_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
# Called as the answer starts: (the request's environ, the status line, seconds taken).
Observer = Callable[[dict[str, Any], str, float], None]


class ResponseEnvelope:
    """Wraps a WSGI app: request id and start time in the environ, headers on the way out.

    A response's kind is read from its Content-Type: HTML is a page (an OPTIONS answer,
    empty, is a preflight, never a page), JSON is the API. Pages added later are
    protected without naming them anywhere.
    """

    def __init__(
        self, app: WsgiApp, headers: ResponseHeaders, observe: Observer | None = None
    ) -> None:
        self.app = app
        self.observe = observe
        # Each kind's set, in the order sent, put together once.
        self.api = (*headers.every, *headers.api)
        self.page = (*headers.every, *headers.page)
        self.other = headers.every

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if incoming and _SANE_ID.match(incoming) else _new_request_id()
        environ[REQUEST_ID] = request_id
        preflight = environ.get("REQUEST_METHOD") == "OPTIONS"
        echoed = ("X-Request-ID", request_id)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if self.observe is not None:  # Flask's request is still in the environ here
                self.observe(environ, status, time.perf_counter() - started)
            kind = _content_type(headers)
            if preflight or kind.startswith("application/json"):
                added = self.api
            elif kind.startswith("text/html"):
                added = self.page
            else:
                added = self.other
            return start_response(status, [*headers, echoed, *added], exc_info)

        return self.app(environ, start)


def _content_type(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.lower()
    return ""


# Request ids: a random prefix drawn once per process (again in a forked child) and a
# counter. Unique, 16 hex digits, without a call to the system's random source per
# request (an id names a request, it guards nothing); `next` on a count is atomic.
_prefix: str
_counter: Iterator[int]


def _draw_prefix() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(5)
    _counter = itertools.count(secrets.randbelow(1 << 20))


_draw_prefix()
os.register_at_fork(after_in_child=_draw_prefix)


def _new_request_id() -> str:
    return f"{_prefix}{next(_counter) % (1 << 24):06x}"


class _JSONProvider(DefaultJSONProvider):
    """Flask's JSON answers (sorted keys, compact, its `default` for dates, dataclasses
    and the like) encoded by orjson: a tenth of the standard library's time on a signed
    association. `dumps` (templates' `tojson`, callers passing options) stays Flask's own.
    """

    _OPTIONS = (
        orjson.OPT_SORT_KEYS
        | orjson.OPT_NON_STR_KEYS
        | orjson.OPT_PASSTHROUGH_DATETIME  # to Flask's `default`, as before
        | orjson.OPT_PASSTHROUGH_DATACLASS
    )

    def response(self, *args: Any, **kwargs: Any) -> BaseResponse:
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(*args, **kwargs)  # indented, for a person
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(obj, default=self.default, option=self._OPTIONS)
        except orjson.JSONEncodeError:  # beyond orjson (an integer past 64 bits, say)
            return super().response(*args, **kwargs)
        return json_response(self._app.response_class, body + b"\n", self.mimetype)


def json_response(response_class: type[BaseResponse], body: bytes, mimetype: str) -> Any:
    """`response_class(body, mimetype=mimetype)` for a JSON body (no charset to add), its
    attributes set as werkzeug's constructor sets them (tests/test_wsgi.py holds the two
    equal): the constructor parses the status, the mimetype and each header it sets
    again on every answer, 27k instructions of a small request's 450k."""
    response: Any = response_class.__new__(response_class)
    response.headers = headers = Headers()
    headers._list = [("Content-Type", mimetype), ("Content-Length", str(len(body)))]
    response._status, response._status_code = "200 OK", 200
    response.direct_passthrough = False
    response._on_close = []
    response.response = [body]
    return response


_MAX_REMEMBERED = 1024  # functions whose answer `Application.ensure_sync` keeps


class _Request(Request):
    """Flask's request, with the larger body limit of its path where the app has one
    (`Application.body_limits`): looked up when a body is read, not on every request."""

    @property
    def max_content_length(self) -> int | None:
        app = typing.cast(Application, current_app)
        larger = app.body_limits.get(self.path)
        return larger if larger is not None else super().max_content_length

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        Request.max_content_length.fset(self, value)  # type: ignore[attr-defined]


class Application(Flask):
    """Flask for a busy API: JSON answers encoded by orjson, and whether each hook and
    view is a coroutine function looked up once.

    Flask asks that on every call of every hook and view (`ensure_sync`); the answer
    never changes for a function, and the asking cost a status request as much as its
    view.
    """

    json_provider_class = _JSONProvider
    request_class = _Request

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable, Callable] = {}
        # Paths whose requests may be larger than MAX_CONTENT_LENGTH, and their limits.
        self.body_limits: dict[str, int] = {}

    def ensure_sync(self, func: Callable) -> Callable:
        try:
            return self._sync[func]
        except (KeyError, TypeError):  # TypeError: an unhashable callable
            pass
        sync = self.async_to_sync(func) if iscoroutinefunction(func) else func  # as Flask
        if len(self._sync) < _MAX_REMEMBERED:  # hooks and views: a few dozen
            with contextlib.suppress(TypeError):
                self._sync[func] = sync
        return sync
