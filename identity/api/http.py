"""Request helpers shared by every API view: body parsing, twin v1/v2 routes, clock."""

import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Callable
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from typing import TypeVar

from flask import Blueprint
from flask import Request
from flask import Response
from flask import current_app
from flask import g
from flask import request
from flask.ctx import _AppCtxGlobals
from werkzeug.datastructures import MultiDict

from identity import invitations
from identity.config import Settings
from identity.errors import BadJson
from identity.errors import InvalidParam
from identity.errors import MatrixError
from identity.errors import MissingParams
from identity.errors import NotJson
from identity.errors import Unrecognized
from identity.routing.table import RoutingTable
from identity.services import services
from identity.wsgi import json_response

V1 = "/api/v1"
V2 = "/v2"

# Canonical JSON's integer range (Matrix specification, appendices): what every
# client reads back exactly and every engine stores in a BIGINT.
MAX_SAFE_INTEGER = 2**53 - 1
# ASCII digits only, few enough for int() (str.isdigit also takes "³" and "٣").
_DECIMAL = re.compile(r"^\s*[+-]?[0-9]{1,16}\s*$")

M = TypeVar("M")
F = TypeVar("F", bound=Callable[..., Any])


def route(
    bp: Blueprint,
    rule: str,
    *,
    v1: bool = True,
    v2: bool = True,
    auth: Callable[[], str] | None = None,
    v1_switch: str | None = None,
    **options: Any,
) -> Callable[[F], F]:
    """Serve one view under /v2 and, where it still exists, /api/v1.

    The view receives ``v2=True`` on the v2 path: the logic is the same, only
    authentication differs.

    :param auth: on the v2 path, called before the view (e.g. ``require_user``); the
        user it returns is `current_user()`. The v1 paths carry no access token.
    :param v1_switch: the `Settings` flag that keeps the v1 path on (e.g.
        ``"v1_lookup_enabled"``); switched off, the v1 path answers as an unknown one.
    """

    def decorator(view: F) -> F:
        endpoint = view
        if auth is not None or v1_switch is not None:
            check = auth

            @functools.wraps(view)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                v2 = kwargs.get("v2")
                if not v2 and v1_switch is not None:
                    require_v1_enabled(getattr(settings(), v1_switch))
                if check is not None:
                    # Set on every request: an app context (and its `g`) may outlive one.
                    request_globals().identity_user = check() if v2 else None
                return view(*args, **kwargs)

            endpoint = typing.cast(F, guarded)
        if v2:
            bp.add_url_rule(V2 + rule, view_func=endpoint, defaults={"v2": True}, **options)
        if v1:
            bp.add_url_rule(V1 + rule, view_func=endpoint, defaults={"v2": False}, **options)
        return view

    return decorator


def require_v1_enabled(enabled: bool) -> None:
    """Answer a v1 path the operator switched off as if it did not exist.

    Sydent's `enable_v1_access` removes the paths; callers get what any unknown path
    gets, and move to the v2 twin.

    :raises MatrixError: 404 M_UNRECOGNIZED.
    """
    if not enabled:
        raise Unrecognized("This v1 endpoint is disabled on this server: use /_matrix/identity/v2")


def current_user() -> str | None:
    """The user the route's `auth` let in, None on a v1 path."""
    return request_globals().get("identity_user")


# Flask's `request` and `g` are proxies: each attribute read through one resolves it
# again, at three times the cost of resolving it once (about 2 µs here). Code on the
# path of every request takes the object itself.


def this_request() -> Request:
    """The request being handled (what `flask.request` stands for)."""
    return request._get_current_object()  # type: ignore[attr-defined]


def request_globals() -> _AppCtxGlobals:
    """The current `flask.g`."""
    return g._get_current_object()


def json_answer(body: bytes) -> Response:
    """A 200 answer of JSON already encoded (a remembered signed answer, say)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return json_response(app.response_class, body, app.json.mimetype)


def json_body(*, allow_form: bool = False) -> dict[str, Any]:
    """Return the request body as a JSON object.

    The legacy v1 paths also accept form-encoded bodies, as older homeservers send.

    :raises MatrixError: M_NOT_JSON when the body is not JSON, M_BAD_JSON when it
        is not an object, M_INVALID_PARAM when a string in it holds a NUL character.
    """
    body: Any
    if allow_form and request.mimetype in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        body = request.form.to_dict()
    else:
        body = request.get_json(force=True, silent=True)
        if body is None or _has_lone_surrogate(body):
            raise NotJson("Content not JSON")
        if not isinstance(body, dict):
            raise BadJson("The body must be a JSON object")
        if b"\\u0000" not in request.get_data():  # how JSON writes a NUL character
            return body
    if _holds_nul(body):
        raise InvalidParam(NUL_REFUSED)
    return body


# U+0000: no address, secret, token or name holds it, and PostgreSQL's text refuses it
# (the query would fail); SQLite would store it. Refused wherever it arrives.
NUL_REFUSED = "Parameters must not contain NUL characters"


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


# A \uD800-\uDFFF escape: the JSON decoder turns a lone one into a str that no codec
# can encode (UTF-8 for the database, a mail or a URL), so such a body is refused here.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(body: Any) -> bool:
    """Whether the decoded body holds a lone UTF-16 surrogate (not valid Unicode, RFC 8259
    section 8.2); paired escapes decode to one code point and are fine."""
    if not _SURROGATE_ESCAPE.search(request.get_data()):
        return False
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse(model: type[M], data: Mapping[str, Any]) -> M:
    """Check `data` (a JSON object, or a query string's arguments: the first value of
    each) against a dataclass `model` and build it. Models are slotted dataclasses, not
    frozen ones: a frozen dataclass's __init__ costs twice as much, on every request.

    :raises MatrixError: M_MISSING_PARAMS listing every missing field, else
        M_INVALID_PARAM naming the first field of the wrong type.
    """
    values: dict[str, Any] = {}
    missing: list[str] = []
    wrong: MatrixError | None = None
    lists = data if isinstance(data, MultiDict) else None
    # One pass (every request parses); the errors are told in the order above.
    for name, expected, required in _FIELDS.get(model) or _fields(model):
        if lists is not None:  # `query_arg`, inline
            given = dict.get(lists, name)
            value = given[0] if given else None
        else:
            value = data.get(name)
        if value is None or value == "":
            if required:
                missing.append(name)
                continue
            if value is None:
                continue
        if wrong is not None:
            continue
        if isinstance(value, str):
            if "\x00" in value:  # a query string's %00 (see json_body)
                wrong = InvalidParam(f"{name} must not contain NUL characters")
                continue
            if expected is str:
                values[name] = value
                continue
        if expected is int:
            try:
                values[name] = _integer(name, value)
            except InvalidParam as e:
                wrong = e
        elif isinstance(value, expected):
            values[name] = value
        else:
            wrong = InvalidParam(f"{name} must be of type {expected.__name__}")
    if missing:
        raise MissingParams("Missing parameters: " + ", ".join(missing))
    if wrong is not None:
        raise wrong
    return model(**values)


def query_arg(args: MultiDict[str, str], name: str) -> str | None:
    """The first value of a query string's argument, None when it is absent.

    Read from the lists werkzeug keeps: its `get` costs two Python calls, and builds an
    exception (a BadRequestKeyError, 20k instructions) for an absent argument."""
    given = dict.get(args, name)
    return given[0] if given else None


class _Field(typing.NamedTuple):
    name: str
    expected: type  # the type its value must have (int: see `_integer`)
    required: bool  # no default


# Each model's fields, worked out once (every request parses).
_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(model: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(model)
    fields = _FIELDS[model] = tuple(
        _Field(
            field.name,
            _concrete_type(hints[field.name]),
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
        )
        for field in dataclasses.fields(model)
    )
    return fields


def _integer(name: str, value: Any) -> int:
    """`value` as an integer the JSON specification's safe range holds, else M_INVALID_PARAM.

    Sydent takes ``int(value)``, so clients and form bodies send numbers such as
    send_attempt as strings ("3") and sometimes as floats (3.0): both are accepted.
    Anything else, or beyond what every engine stores and every client reads back
    (canonical JSON's ±(2**53 - 1)), is refused here rather than by the database.
    """
    from_string = isinstance(value, str) and _DECIMAL.match(value)
    if from_string or (isinstance(value, float) and value.is_integer()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParam(f"{name} must be an integer")
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise InvalidParam(f"{name} is out of range")
    return value


def _concrete_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def now() -> datetime:
    """The current time from the app's clock (a fake one in tests)."""
    return services().clock.now()


def settings() -> Settings:
    return services().settings


def routing_table() -> RoutingTable:
    """The routing rules in force (domains.yaml, reloaded when it changes)."""
    return services().routing.table()


def invite_policy() -> invitations.Policy:
    """The deployment's invitation policy (store-invite and the landing page)."""
    return services().invitation_policy()
