"""Behaviour common to every endpoint: versions, status, CORS and Matrix errors."""

import dataclasses

import pytest
from sqlalchemy import text
from werkzeug.datastructures import MultiDict

from identity.api.http import parse
from identity.errors import MatrixError
from identity.extensions import db
from tests.helpers import V1

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Origin, X-Requested-With, Content-Type, Accept, Authorization",
}


def assert_cors(response):
    for name, value in CORS.items():
        assert response.headers[name] == value


def test_versions_lists_v1_1_and_later(client):
    r = client.get("/_matrix/identity/versions")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    assert {"v1.1", "v1.18"} <= set(r.json["versions"])
    assert_cors(r)


@pytest.mark.parametrize("path", ["/_matrix/identity/v2", "/_matrix/identity/api/v1"])
def test_status_endpoints_answer_empty_object(client, path):
    r = client.get(path)
    assert (r.status_code, r.json) == (200, {})
    assert_cors(r)


def test_unknown_path_is_m_unrecognized_404(client):
    r = client.get("/_matrix/identity/v2/nope")
    assert (r.status_code, r.json["errcode"]) == (404, "M_UNRECOGNIZED")
    assert r.mimetype == "application/json"
    assert_cors(r)


def test_wrong_method_is_m_unrecognized_405(client):
    r = client.post("/_matrix/identity/versions")
    assert (r.status_code, r.json["errcode"]) == (405, "M_UNRECOGNIZED")
    assert "GET" in r.headers["Allow"]
    assert_cors(r)


def test_options_preflight_is_answered_with_cors(client):
    r = client.options("/_matrix/identity/v2")
    assert r.status_code == 200
    assert_cors(r)


def test_unexpected_exception_is_m_unknown_500(app, client):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/_matrix/identity/v2/boom")
    def boom():
        raise RuntimeError("kaboom")

    r = client.get("/_matrix/identity/v2/boom")
    assert (r.status_code, r.json) == (
        500,
        {"errcode": "M_UNKNOWN", "error": "Internal server error"},
    )
    assert "kaboom" not in r.get_data(as_text=True)
    assert_cors(r)


def test_a_token_checked_while_the_database_is_out_fails_only_what_needs_it(make_app, tmp_path):
    """The limit hook reads the token of every request: a database outage must not turn
    requests that need no token into errors. Those that do get a 503 to retry."""
    unreachable = f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}"
    app = make_app(SQLALCHEMY_DATABASE_URI=unreachable, AUTO_MIGRATE=False,
                   PROPAGATE_EXCEPTIONS=False, RATELIMIT_ENABLED=True)  # fmt: skip
    client = app.test_client()
    token = {"Authorization": "Bearer someToken"}
    assert client.get("/_matrix/identity/v2", headers=token).status_code == 200
    r = client.get("/_matrix/identity/v2/account", headers=token)
    assert (r.status_code, r.json["errcode"]) == (503, "M_UNKNOWN")
    assert r.headers["Retry-After"] == "5"


NUL = "\u0000"
# Where a NUL character can arrive: the query string, a JSON body (a field the view
# parses, a list inside one, a field stored as it came), a form body.
NUL_REQUESTS = {
    "v1 lookup": ("GET", f"{V1}/lookup?medium=email&address=a%00b@x.fr", {}),
    "v1 lookup medium": ("GET", f"{V1}/lookup?medium=e%00mail&address=ab@x.fr", {}),
    "info": ("GET", f"{V1}/info?medium=email&address=a%00b@x.fr", {}),
    "pubkey isvalid": ("GET", f"{V1}/pubkey/isvalid?public_key=AA%00AA", {}),
    "ephemeral isvalid": ("GET", f"{V1}/pubkey/ephemeral/isvalid?public_key=AA%00AA", {}),
    "getValidated3pid": ("GET", f"{V1}/3pid/getValidated3pid?sid=1%00&client_secret=ab", {}),
    "bulk_lookup": ("POST", f"{V1}/bulk_lookup",
                    {"json": {"threepids": [["email", f"a{NUL}@x.fr"]]}}),
    "submitToken": ("POST", f"{V1}/validate/email/submitToken",
                    {"json": {"sid": f"1{NUL}", "client_secret": "ab", "token": "x"}}),
    "submitToken form": ("POST", f"{V1}/validate/email/submitToken",
                         {"data": {"sid": f"1{NUL}", "client_secret": "ab", "token": "x"}}),
    "bind": ("POST", f"{V1}/3pid/bind", {"json": {"sid": f"1{NUL}", "client_secret": "ab",
                                                  "mxid": "@a:agent.tchap.gouv.fr"}}),
    "store-invite room name": ("POST", f"{V1}/store-invite", {"json": {
        "medium": "email", "address": "guest@exemple.fr", "room_id": "!r:agent.tchap.gouv.fr",
        "sender": "@s:agent.tchap.gouv.fr", "room_name": f"Salle{NUL}"}}),
    "sign-ed25519": ("POST", f"{V1}/sign-ed25519",
                     {"json": {"private_key": "x", "token": f"t{NUL}", "mxid": "@a:b"}}),
}  # fmt: skip


@pytest.mark.parametrize("request_", NUL_REQUESTS.values(), ids=NUL_REQUESTS.keys())
def test_a_nul_character_is_a_clear_400_on_every_database(client, request_):
    # PostgreSQL refuses U+0000 in text: once a 500 from the query.
    method, path, kwargs = request_
    r = client.open(path, method=method, **kwargs)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    assert "NUL" in r.json["error"]


def test_an_escaped_backslash_before_u0000_is_no_nul(client):
    # The text "\u0000" (a backslash, then u0000) is not a NUL character.
    r = client.post(f"{V1}/bulk_lookup", json={"threepids": [["email", "a\\u0000@x.fr"]]})
    assert (r.status_code, r.json) == (200, {"threepids": []})


@dataclasses.dataclass(frozen=True)
class _Query:
    count: int
    name: str
    label: str = "none"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"count": "3", "name": "a"}, _Query(3, "a")),
        ({"count": 3, "name": "a", "label": ""}, _Query(3, "a", "")),  # "" kept when optional
        ({"count": "x", "name": ""}, "M_MISSING_PARAMS: Missing parameters: name"),
        ({"name": 1}, "M_MISSING_PARAMS: Missing parameters: count"),
        ({"count": "x", "name": 1}, "M_INVALID_PARAM: count must be an integer"),
        ({"count": 1, "name": 1, "label": 2}, "M_INVALID_PARAM: name must be of type str"),
        ({"count": "1\x00", "name": "a"}, "M_INVALID_PARAM: count must not contain NUL characters"),
        (MultiDict([("count", "1"), ("name", "a"), ("name", "b")]), _Query(1, "a")),
    ],
)
def test_parse_checks_every_field_then_tells_the_first_problem(data, expected):
    """Missing fields are told before wrong ones, all of them; of the wrong ones, the
    first. A query string's repeated argument counts by its first value."""
    try:
        parsed = parse(_Query, data)
    except MatrixError as e:
        parsed = f"{e.errcode}: {e.error}"
    assert parsed == expected


def test_each_request_ends_the_session_it_opened(app):
    """Rolled back and removed when its context ends (app._end_session; the extension's
    own teardown is not registered), and the next one starts afresh."""
    with app.test_request_context("/_matrix/identity/v2"):
        db.session.execute(text("SELECT 1"))
        session = db.session()
        assert session.in_transaction()
    assert not session.in_transaction()
    with app.test_request_context("/_matrix/identity/v2"):
        assert db.session() is not session
