"""Accounts (OpenID registration, tokens, logout) and terms of service."""

import pytest
from sqlalchemy import select

from app import create_app
from identity.extensions import db
from identity.storage.models import AccessToken
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import register_user

TERMS = """
master_version: "2026-11"
docs:
  privacy:
    version: "2.0"
    langs:
      fr: {name: "Politique de confidentialité", url: "https://tchap.test/privacy-fr-2.0"}
      en: {name: "Privacy policy", url: "https://tchap.test/privacy-en-2.0"}
  cgu:
    version: "1.1"
    langs:
      fr: {name: "Conditions générales", url: "https://tchap.test/cgu-fr-1.1"}
"""


def test_register_with_openid_token_gives_a_working_token(client, fake_homeserver):
    token = register_user(client, fake_homeserver, "alice")
    r = client.get(f"{V2}/account", headers=auth(token))
    assert (r.status_code, r.json) == (200, {"user_id": fake_homeserver.user_id("alice")})


def test_tokens_are_stored_only_as_hashes(app, client, fake_homeserver):
    token = register_user(client, fake_homeserver)
    with app.app_context():
        stored = db.session.scalars(select(AccessToken.token_hash)).all()
    assert stored and token not in stored


def test_forged_openid_token_is_refused(client, fake_homeserver):
    r = client.post(
        f"{V2}/account/register",
        json={"access_token": "forged", "matrix_server_name": fake_homeserver.server_name},
    )
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_homeserver_vouching_for_another_servers_user_is_refused(client, fake_homeserver):
    token = fake_homeserver.issue_openid_token("mallory", sub="@boss:elysee.gouv.fr")
    r = client.post(
        f"{V2}/account/register",
        json={"access_token": token, "matrix_server_name": fake_homeserver.server_name},
    )
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_unreachable_homeserver_is_refused(client, fake_homeserver):
    token = fake_homeserver.issue_openid_token("alice")
    fake_homeserver.stop()
    r = client.post(
        f"{V2}/account/register",
        json={"access_token": token, "matrix_server_name": fake_homeserver.server_name},
    )
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_homeserver_on_loopback_is_not_called_unless_allowlisted(make_app, fake_homeserver):
    client = make_app(FEDERATION_IP_ALLOWLIST=[]).test_client()
    token = fake_homeserver.issue_openid_token("alice")
    r = client.post(
        f"{V2}/account/register",
        json={"access_token": token, "matrix_server_name": fake_homeserver.server_name},
    )
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")
    assert fake_homeserver.userinfo_requests == 0


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"matrix_server_name": "hs.example"}, "M_MISSING_PARAMS"),
        ({"access_token": "x"}, "M_MISSING_PARAMS"),
        ({"access_token": "x", "matrix_server_name": "bad name/with slash"}, "M_INVALID_PARAM"),
        ({"access_token": 5, "matrix_server_name": "hs.example"}, "M_INVALID_PARAM"),
    ],
)
def test_register_rejects_bad_bodies(client, body, errcode):
    r = client.post(f"{V2}/account/register", json=body)
    assert (r.status_code, r.json["errcode"]) == (400, errcode)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "x"}])
def test_missing_or_unknown_token_is_401(client, headers):
    r = client.get(f"{V2}/account", headers=headers)
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_query_string_access_token_is_not_accepted(client, fake_homeserver):
    token = register_user(client, fake_homeserver)
    r = client.get(f"{V2}/account?access_token={token}")
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_logout_invalidates_the_token(client, fake_homeserver):
    token = register_user(client, fake_homeserver)
    assert client.post(f"{V2}/account/logout", headers=auth(token)).json == {}
    r = client.get(f"{V2}/account", headers=auth(token))
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_no_terms_file_means_no_policies(client):
    assert client.get(f"{V2}/terms").json == {"policies": {}}


@pytest.fixture
def terms_file(config, tmp_path):
    path = tmp_path / "terms.yaml"
    path.write_text(TERMS)
    config["TERMS_PATH"] = str(path)
    return path


def test_terms_are_served_in_the_spec_shape(terms_file, client):
    policies = client.get(f"{V2}/terms").json["policies"]
    assert policies["privacy"]["version"] == "2.0"
    assert policies["privacy"]["fr"] == {
        "name": "Politique de confidentialité",
        "url": "https://tchap.test/privacy-fr-2.0",
    }
    assert set(policies) == {"privacy", "cgu"}


def test_terms_not_signed_until_every_document_is_accepted(terms_file, client, fake_homeserver):
    token = register_user(client, fake_homeserver)
    hash_details = f"{V2}/3pid/getValidated3pid?sid=1&client_secret=x"
    r = client.get(hash_details, headers=auth(token))
    assert (r.status_code, r.json["errcode"]) == (403, "M_TERMS_NOT_SIGNED")

    accept = {"user_accepts": ["https://tchap.test/privacy-en-2.0", "https://unknown.test/x"]}
    assert client.post(f"{V2}/terms", json=accept, headers=auth(token)).status_code == 200
    r = client.get(hash_details, headers=auth(token))
    assert r.json["errcode"] == "M_TERMS_NOT_SIGNED"  # cgu still missing

    accept = {"user_accepts": ["https://tchap.test/cgu-fr-1.1"]}
    assert client.post(f"{V2}/terms", json=accept, headers=auth(token)).status_code == 200
    r = client.get(hash_details, headers=auth(token))
    assert r.json["errcode"] == "M_NO_VALID_SESSION"  # past authentication now


def test_account_endpoint_works_before_terms_are_signed(terms_file, client, fake_homeserver):
    token = register_user(client, fake_homeserver)
    assert client.get(f"{V2}/account", headers=auth(token)).status_code == 200


def test_malformed_terms_file_stops_start_up(config, tmp_path, clock):
    from identity.config import ConfigError

    bad = tmp_path / "terms.yaml"
    bad.write_text("master_version: 1\ndocs: {}\n")
    config["TERMS_PATH"] = str(bad)
    with pytest.raises(ConfigError, match="TERMS_PATH"):
        create_app(config, clock=clock)


# -- homeservers allowed to register ------------------------------------------------


def register(client, fake_homeserver, localpart="alice"):
    body = {
        "access_token": fake_homeserver.issue_openid_token(localpart),
        "matrix_server_name": fake_homeserver.server_name,
    }
    return client.post(f"{V2}/account/register", json=body)


def test_only_allowlisted_homeservers_register(make_app, fake_homeserver):
    closed = {f"V1_{family}_ENABLED": False for family in ("STORE_INVITE", "LOOKUP", "BIND")}
    other = make_app(REGISTER_HOMESERVER_ALLOWLIST=["agent.tchap.gouv.fr"], **closed)
    r = register(other.test_client(), fake_homeserver)
    assert (r.status_code, r.json["errcode"]) == (403, "M_UNAUTHORIZED")
    assert fake_homeserver.userinfo_requests == 0  # not even asked
    listed = make_app(REGISTER_HOMESERVER_ALLOWLIST=[fake_homeserver.server_name], **closed)
    assert register(listed.test_client(), fake_homeserver).status_code == 200


def test_an_allowlist_with_the_v1_api_open_stops_start_up(config, clock):
    from identity.config import ConfigError

    with pytest.raises(ConfigError, match="REGISTER_HOMESERVER_ALLOWLIST.*V1_LOOKUP_ENABLED"):
        create_app(
            {**config, "REGISTER_HOMESERVER_ALLOWLIST": ["a.example"], "V1_LOOKUP_ENABLED": True},
            clock=clock,
        )


# -- flask accounts token -----------------------------------------------------------


def cli_token(runner, *args):
    result = runner.invoke(args=["accounts", "token", *args])
    return result


def test_cli_token_works_on_the_v2_api(runner, client, smtp):
    result = cli_token(runner, "@admin:agent.dinum.tchap.gouv.fr")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) >= 32 and "\n" not in token
    r = client.get(f"{V2}/account", headers=auth(token))
    assert (r.status_code, r.json) == (200, {"user_id": "@admin:agent.dinum.tchap.gouv.fr"})
    r = client.post(
        f"{V2}/validate/email/requestToken",
        json={"client_secret": "s3cret", "email": "a@ac-versailles.fr", "send_attempt": 1},
        headers=auth(token),
    )
    assert r.status_code == 200 and smtp.last().recipients == ["a@ac-versailles.fr"]
    assert client.get(f"{V2}/hash_details", headers=auth(token)).status_code == 200


def test_cli_token_respects_the_terms(terms_file, runner, client):
    result = cli_token(runner, "@marie:agent.dinum.tchap.gouv.fr")
    assert result.exit_code == 0 and "M_TERMS_NOT_SIGNED" in result.stderr
    r = client.get(f"{V2}/hash_details", headers=auth(result.stdout.strip()))
    assert (r.status_code, r.json["errcode"]) == (403, "M_TERMS_NOT_SIGNED")
    result = cli_token(runner, "@marie:agent.dinum.tchap.gouv.fr", "--accept-terms")
    assert result.exit_code == 0 and result.stderr == ""
    assert client.get(f"{V2}/hash_details", headers=auth(result.stdout.strip())).status_code == 200


@pytest.mark.parametrize("user_id", ["marie", "@marie", "@marie:bad name", ""])
def test_cli_token_refuses_what_is_not_a_user_id(app, runner, user_id):
    result = cli_token(runner, user_id)
    assert result.exit_code == 2 and "Not a Matrix user ID" in result.output
    with app.app_context():
        assert db.session.scalars(select(AccessToken.token_hash)).all() == []
