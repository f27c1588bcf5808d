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
