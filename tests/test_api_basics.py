"""Behaviour common to every endpoint: versions, status, CORS and Matrix errors."""

import pytest

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
    requests that need no token into 500s. Those that do get a Matrix error."""
    unreachable = f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}"
    app = make_app(SQLALCHEMY_DATABASE_URI=unreachable, AUTO_MIGRATE=False,
                   PROPAGATE_EXCEPTIONS=False, RATELIMIT_ENABLED=True)  # fmt: skip
    client = app.test_client()
    token = {"Authorization": "Bearer someToken"}
    assert client.get("/_matrix/identity/v2", headers=token).status_code == 200
    r = client.get("/_matrix/identity/v2/account", headers=token)
    assert (r.status_code, r.json["errcode"]) == (500, "M_UNKNOWN")
