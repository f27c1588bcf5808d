"""The internal API: homeservers bind and unbind addresses they verified themselves."""

import signedjson.key
import signedjson.sign

from identity import keys
from identity import worker
from identity.services import services
from tests.helpers import V1

INTERNAL = "/_matrix/identity/internal"
SECRET = {"Authorization": "Bearer partage"}
AGENT = "paul.durand@ac-versailles.fr"


def post(client, path, body, headers=SECRET, ip="127.0.0.1"):
    return client.post(f"{INTERNAL}/{path}", json=body, headers=headers,
                       environ_base={"REMOTE_ADDR": ip})  # fmt: skip


def test_closed_unless_configured(client):
    r = post(client, "bind", {"address": AGENT, "mxid": "@paul:agent.education.tchap.gouv.fr"})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")


def test_only_trusted_callers(make_app):
    client = make_app(
        INTERNAL_API_SECRET="partage", INTERNAL_API_TRUSTED_NETWORKS=["10.0.0.0/8"]
    ).test_client()
    body = {"address": AGENT, "mxid": "@paul:agent.education.tchap.gouv.fr"}
    r = post(client, "bind", body, headers={"Authorization": "Bearer autre"}, ip="192.0.2.1")
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert post(client, "bind", body, headers={}, ip="10.2.3.4").status_code == 200
    assert post(client, "unbind", body, ip="192.0.2.1").status_code == 200


def test_bind_lookup_unbind(make_app, config):
    app = make_app(INTERNAL_API_SECRET="partage", RESTRICT_BINDS_TO_ROUTING=True)
    client = app.test_client()
    mxid = "@paul:agent.education.tchap.gouv.fr"
    r = post(client, "bind", {"medium": "email", "address": "Paul.Durand@AC-Versailles.fr",
                              "mxid": mxid})  # fmt: skip
    assert r.status_code == 200, r.json
    assert (r.json["address"], r.json["mxid"]) == (AGENT, mxid)
    verify_key = signedjson.key.get_verify_key(keys.read(config["SIGNING_KEY_PATH"]))
    signedjson.sign.verify_signed_json(r.json, "id.tchap.test", verify_key)
    found = client.get(f"{V1}/lookup", query_string={"medium": "email", "address": AGENT})
    assert found.json["mxid"] == mxid
    # The routing rules hold here too: an education address stays off other platforms.
    r = post(client, "bind", {"address": AGENT, "mxid": "@paul:agent.externe.tchap.gouv.fr"})
    assert (r.status_code, r.json["errcode"]) == (400, "M_BINDING_NOT_PERMITTED")
    assert post(client, "unbind", {"address": AGENT, "mxid": mxid}).json == {}
    found = client.get(f"{V1}/lookup", query_string={"medium": "email", "address": AGENT})
    assert found.json == {}


def test_pending_invitations_are_delivered(make_app, smtp, fake_homeserver):
    app = make_app(INTERNAL_API_SECRET="partage")
    client = app.test_client()
    guest = "claire@partenaire.example"
    invite = {
        "medium": "email",
        "address": guest,
        "room_id": "!salon:agent.dinum.tchap.gouv.fr",
        "sender": "@marie:agent.dinum.tchap.gouv.fr",
    }
    token = client.post(f"{V1}/store-invite", json=invite).json["token"]
    mxid = fake_homeserver.user_id("claire")
    assert post(client, "bind", {"address": guest, "mxid": mxid}).status_code == 200
    with app.app_context():
        assert worker.run_due(now=services(app).clock.now()) == 1
    [call] = fake_homeserver.onbind_calls
    assert call["mxid"] == mxid and call["invites"][0]["signed"]["token"] == token


def test_bad_bodies(make_app):
    client = make_app(INTERNAL_API_SECRET="partage").test_client()
    r = post(client, "bind", {"address": AGENT})
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")
    r = post(client, "bind", {"medium": "msisdn", "address": "33612345678", "mxid": "@a:b.fr"})
    assert (r.status_code, r.json["errcode"]) == (400, "M_UNRECOGNIZED")
    r = post(client, "bind", {"address": "pas-une-adresse", "mxid": "@a:b.fr"})
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_EMAIL")
    r = post(client, "bind", {"address": AGENT, "mxid": "paul"})
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    r = client.get(f"{INTERNAL}/bind", headers=SECRET)
    assert r.status_code == 405 and r.json["errcode"] == "M_UNRECOGNIZED"
