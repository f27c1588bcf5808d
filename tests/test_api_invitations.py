"""store-invite, the key endpoints, sign-ed25519 and the onbind delivery queue."""

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote
from urllib.parse import urlencode

import pytest
import requests
import signedjson.key
import signedjson.sign
from flask_migrate import downgrade
from flask_migrate import upgrade
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text

from app import MIGRATIONS_DIR
from identity import keys
from identity import worker
from identity.extensions import db
from identity.services import services
from identity.storage.models import Delivery
from identity.storage.models import Invitation
from testing.servers import ROOT
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import landing_link_from_mail
from tests.helpers import query_of
from tests.helpers import register_user
from tests.helpers import relative
from tests.helpers import validate_address
from tests.helpers import web_client_link_from_page

GUEST = "claire.martin@partenaire.example"
ROOM = "!projetx:agent.dinum.tchap.gouv.fr"
SENDER = "@marie.dupont-numerique.gouv.fr:agent.dinum.tchap.gouv.fr"


def store_invite(client, address=GUEST, *, prefix=V1, headers=None, sender=SENDER, **extra):
    body = {
        "medium": "email",
        "address": address,
        "room_id": ROOM,
        "sender": sender,
        "room_name": "Projet X",
        "sender_display_name": "Marie Dupont",
        **extra,
    }
    return client.post(f"{prefix}/store-invite", json=body, headers=headers)


def long_term_key(config):
    return keys.read(config["SIGNING_KEY_PATH"])


@pytest.mark.parametrize("prefix", [V1, V2])
def test_public_key_endpoints(config, client, prefix):
    r = client.get(f"{prefix}/pubkey/ed25519:0")
    expected = signedjson.key.encode_verify_key_base64(long_term_key(config).verify_key)
    assert r.json == {"public_key": expected}
    r = client.get(f"{prefix}/pubkey/isvalid", query_string={"public_key": expected})
    assert r.json == {"valid": True}
    assert client.get(f"{prefix}/pubkey/isvalid?public_key=AAAA").json == {"valid": False}
    r = client.get(f"{prefix}/pubkey/ed25519:9")
    assert (r.status_code, r.json["errcode"]) == (404, "M_NOT_FOUND")
    r = client.get(f"{prefix}/pubkey/isvalid")
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")


def test_store_invite_mails_the_guest_and_returns_the_keys(config, client, smtp):
    r = store_invite(client)
    assert r.status_code == 200
    answer = r.json
    assert len(answer["token"]) >= 32
    assert answer["display_name"] == "cla…@par…"
    long_term = signedjson.key.encode_verify_key_base64(long_term_key(config).verify_key)
    assert answer["public_key"] == long_term
    assert answer["public_keys"][0] == {
        "public_key": long_term,
        "key_validity_url": "https://id.tchap.test/_matrix/identity/api/v1/pubkey/isvalid",
    }
    ephemeral = answer["public_keys"][1]
    assert ephemeral["key_validity_url"].endswith("/api/v1/pubkey/ephemeral/isvalid")
    r = client.get(
        f"{V1}/pubkey/ephemeral/isvalid", query_string={"public_key": ephemeral["public_key"]}
    )
    assert r.json == {"valid": True}
    assert client.get(f"{V2}/pubkey/ephemeral/isvalid?public_key=nope").json == {"valid": False}

    mail = smtp.last()
    assert mail.recipients == [GUEST]
    assert "Marie Dupont vous invite" in mail.message["Subject"]
    text = mail.text()
    assert text.index("vous invite à rejoindre") < text.index("invites you to join")
    assert "Projet X" in text and "Projet X" in mail.html()


def test_link_in_the_mail_signs_with_the_ephemeral_key(config, client, smtp):
    answer = store_invite(client).json
    page = client.get(relative(landing_link_from_mail(smtp.last())))
    assert page.status_code == 200
    link = web_client_link_from_page(page.text)
    query = query_of(link.replace("#/room/", ""))
    assert query["email"] == GUEST and query["room_name"] == "Projet X"
    sign_query = query_of(unquote(query["signurl"]))
    assert sign_query["token"] == answer["token"]
    mxid = "@claire.martin-partenaire.example:agent.externe.tchap.gouv.fr"
    body = {"mxid": mxid, "token": sign_query["token"], "private_key": sign_query["private_key"]}
    r = client.post(f"{V1}/sign-ed25519", json=body)
    assert r.status_code == 200
    assert {k: r.json[k] for k in ("mxid", "sender", "token")} == {
        "mxid": mxid,
        "sender": SENDER,
        "token": answer["token"],
    }
    ephemeral_public = answer["public_keys"][1]["public_key"]
    verify = signedjson.key.decode_verify_key_bytes(
        "ed25519:0", signedjson.key.decode_base64(ephemeral_public)
    )
    signedjson.sign.verify_signed_json(r.json, "id.tchap.test", verify)


def test_sign_ed25519_errors(client, smtp):
    answer = store_invite(client).json
    r = client.post(
        f"{V1}/sign-ed25519", json={"mxid": "@a:b", "token": "unknown", "private_key": "x"}
    )
    assert (r.status_code, r.json["errcode"]) == (404, "M_UNRECOGNIZED")
    body = {"mxid": "@a:b", "token": answer["token"], "private_key": "!!"}
    r = client.post(f"{V1}/sign-ed25519", json=body)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    r = client.post(f"{V2}/sign-ed25519", json=body)
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_v2_store_invite_requires_the_sender_to_be_the_user(client, smtp, fake_homeserver):
    headers = auth(register_user(client, fake_homeserver, "marie"))
    r = store_invite(client, prefix=V2, headers=headers)
    # Tchap's errcode for it (its Sydent branch), which its homeservers handle.
    assert (r.status_code, r.json["errcode"]) == (403, "M_UNAUTHORIZED")
    assert smtp.messages == []
    r = store_invite(client, prefix=V2, headers=headers, sender=fake_homeserver.user_id("marie"))
    assert r.status_code == 200
    shown = smtp.last().text().replace("\u200b", "")  # without the defanging spaces
    assert f"({fake_homeserver.user_id('marie')})" in shown  # verified sender
    r = store_invite(client, prefix=V2)
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


@pytest.mark.parametrize(
    ("change", "errcode"),
    [
        ({"medium": "msisdn"}, "M_UNRECOGNIZED"),
        ({"address": "pas-une-adresse"}, "M_INVALID_EMAIL"),
        ({"room_id": None}, "M_MISSING_PARAMS"),
        ({"room_id": ""}, "M_MISSING_PARAMS"),
        ({"room_id": "!" + "r" * 255}, "M_INVALID_PARAM"),
        ({"room_id": 12}, "M_INVALID_PARAM"),
    ],
)
def test_store_invite_errors(client, smtp, change, errcode):
    body = {"medium": "email", "address": GUEST, "room_id": ROOM, "sender": SENDER, **change}
    r = client.post(f"{V1}/store-invite", json={k: v for k, v in body.items() if v is not None})
    assert (r.status_code, r.json["errcode"]) == (400, errcode)
    assert smtp.messages == []


@pytest.mark.parametrize(
    "room_id",
    [
        "!projetx:agent.dinum.tchap.gouv.fr",
        "!opaque-room-id-without-a-server",
        "#projetx:agent.dinum.tchap.gouv.fr",  # not ours to judge: Sydent stores it too
        "salon",
        "!" + "r" * 254,  # 255 bytes, the longest Matrix identifier
    ],
)
def test_store_invite_takes_the_room_id_as_an_opaque_string(client, smtp, room_id):
    r = client.post(
        f"{V1}/store-invite",
        json={"medium": "email", "address": GUEST, "room_id": room_id, "sender": SENDER},
    )
    assert r.status_code == 200, r.json
    assert smtp.last().recipients == [GUEST]


def test_store_invite_for_a_bound_address_is_threepid_in_use(client, smtp):
    sid = validate_address(client, smtp, GUEST)
    mxid = "@claire:agent.externe.tchap.gouv.fr"
    client.post(f"{V1}/3pid/bind", json={"sid": sid, "client_secret": "s3cret", "mxid": mxid})
    r = store_invite(client)
    assert (r.status_code, r.json["errcode"], r.json["mxid"]) == (400, "M_THREEPID_IN_USE", mxid)


def test_smtp_failure_stores_no_invitation(app, client, smtp):
    smtp.refuse = True
    r = store_invite(client)
    assert (r.status_code, r.json["errcode"]) == (500, "M_EMAIL_SEND_ERROR")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Invitation)) == 0


# -- delivery on bind ------------------------------------------------------------


def bind(client, smtp, mxid, address=GUEST):
    sid = validate_address(client, smtp, address, secret="bind-secret")
    body = {"sid": sid, "client_secret": "bind-secret", "mxid": mxid}
    r = client.post(f"{V1}/3pid/bind", json=body)
    assert r.status_code == 200, r.json


def run_deliveries(app):
    with app.app_context():
        return worker.run_due(now=services(app).clock.now())


def test_bind_delivers_the_invitation_with_onbind(config, app, client, smtp, fake_homeserver):
    token = store_invite(client).json["token"]
    mxid = fake_homeserver.user_id("claire")
    bind(client, smtp, mxid)
    assert run_deliveries(app) == 1
    [call] = fake_homeserver.onbind_calls
    assert (call["medium"], call["address"], call["mxid"]) == ("email", GUEST, mxid)
    [invite] = call["invites"]
    assert (invite["room_id"], invite["sender"], invite["mxid"]) == (ROOM, SENDER, mxid)
    assert invite["signed"]["token"] == token and invite["signed"]["mxid"] == mxid
    verify = signedjson.key.get_verify_key(long_term_key(config))
    signedjson.sign.verify_signed_json(invite["signed"], "id.tchap.test", verify)
    assert run_deliveries(app) == 0 and len(fake_homeserver.onbind_calls) == 1  # exactly once


def test_delivery_retries_until_the_homeserver_is_back(app, client, smtp, clock, fake_homeserver):
    store_invite(client)
    fake_homeserver.stop()
    bind(client, smtp, fake_homeserver.user_id("claire"))
    assert run_deliveries(app) == 0
    fake_homeserver.start()
    assert run_deliveries(app) == 0  # not due yet: backing off
    clock.advance(seconds=11)
    assert run_deliveries(app) == 1
    assert len(fake_homeserver.onbind_calls) == 1


def test_delivery_survives_a_restart_of_the_service(
    make_app, app, client, smtp, clock, fake_homeserver
):
    store_invite(client)
    fake_homeserver.onbind_status = 500
    bind(client, smtp, fake_homeserver.user_id("claire"))
    assert run_deliveries(app) == 0
    fake_homeserver.onbind_status = 200
    clock.advance(minutes=5)
    restarted = make_app()  # a new process on the same database
    assert run_deliveries(restarted) == 1
    assert len(fake_homeserver.onbind_calls) == 1


def test_expired_invitation_is_not_delivered(app, client, smtp, clock, fake_homeserver):
    store_invite(client)
    clock.advance(days=31)
    bind(client, smtp, fake_homeserver.user_id("claire"))
    assert run_deliveries(app) == 0
    assert fake_homeserver.onbind_calls == []


def test_invitation_expiring_while_queued_is_dropped(app, client, smtp, clock, fake_homeserver):
    store_invite(client)
    clock.advance(days=29)
    fake_homeserver.stop()
    bind(client, smtp, fake_homeserver.user_id("claire"))
    assert run_deliveries(app) == 0
    fake_homeserver.start()
    clock.advance(days=2)
    assert run_deliveries(app) == 0
    assert fake_homeserver.onbind_calls == []


def test_deliveries_cli(app, client, smtp, runner, fake_homeserver):
    store_invite(client)
    bind(client, smtp, fake_homeserver.user_id("claire"))
    assert "1 delivery" in runner.invoke(args=["deliveries", "status"]).output
    assert "Delivered 1" in runner.invoke(args=["deliveries", "run-due"]).output
    assert "0 delivery" in runner.invoke(args=["deliveries", "status"]).output


# -- what an unauthenticated (v1) invitation may do ------------------------------------

EVIL_CLIENT = "https://tchap.evil.example"


def landing_page(client, smtp, lang="fr"):
    return client.get(relative(landing_link_from_mail(smtp.last(), lang)))


def test_web_client_location_of_the_request_is_ignored_by_default(client, smtp):
    store_invite(client, **{"org.matrix.web_client_location": EVIL_CLIENT})
    page = landing_page(client, smtp).text
    assert "evil.example" not in page  # neither the link, nor the key, nor the address
    assert web_client_link_from_page(page).startswith("https://www.tchap.gouv.fr/#/room/")
    assert "evil.example" not in smtp.last().text() + smtp.last().html()


def test_web_client_location_only_for_allowed_hosts(make_app, smtp):
    client = make_app(WEB_CLIENT_LOCATION_ALLOWLIST=["app.tchap.test"]).test_client()
    store_invite(client, **{"org.matrix.web_client_location": "https://app.tchap.test/"})
    assert 'href="https://app.tchap.test/#/room/' in landing_page(client, smtp).text
    for requested in (EVIL_CLIENT, "https://app.tchap.test.evil.example", "http://app.tchap.test"):
        store_invite(client, **{"org.matrix.web_client_location": requested})
        page = landing_page(client, smtp).text
        assert "evil.example" not in page and "http://app.tchap.test" not in page
        assert 'href="https://www.tchap.gouv.fr/#/room/' in page


def test_v1_senders_are_marked_unverified_in_the_mail_and_page(client, smtp, fake_homeserver):
    store_invite(client)  # v1: anyone may name any sender
    mail = smtp.last()
    for part in (mail.text(), mail.html()):
        assert part.index("expéditeur n'a pas été vérifiée") < part.index(
            "sender's identity has not been verified"
        )
    page = landing_page(client, smtp).text
    assert "Expéditeur non vérifié" in page
    assert "Unverified sender" in landing_page(client, smtp, "en").text

    headers = auth(register_user(client, fake_homeserver, "marie"))
    sender = fake_homeserver.user_id("marie")
    assert store_invite(client, prefix=V2, headers=headers, sender=sender).status_code == 200
    mail = smtp.last()
    assert "pas été vérifiée" not in mail.text() and "not been verified" not in mail.text()
    assert "non vérifié" not in landing_page(client, smtp).text


V1_FAMILIES = {
    "V1_STORE_INVITE_ENABLED": [
        ("post", "/store-invite", {"medium": "email", "address": GUEST, "room_id": ROOM,
                                   "sender": SENDER}),
    ],
    "V1_LOOKUP_ENABLED": [
        ("get", "/lookup?medium=email&address=a@ac-versailles.fr", None),
        ("post", "/bulk_lookup", {"threepids": [["email", "a@ac-versailles.fr"]]}),
    ],
    "V1_BIND_ENABLED": [
        ("post", "/3pid/bind", {"sid": "1", "client_secret": "s", "mxid": "@a:b.example"}),
    ],
}  # fmt: skip


@pytest.mark.parametrize("switch", V1_FAMILIES)
def test_operators_can_switch_off_v1_families(make_app, smtp, switch):
    on, off = make_app().test_client(), make_app(**{switch: False}).test_client()
    for method, path, body in V1_FAMILIES[switch]:
        r = getattr(on, method)(V1 + path, json=body)
        assert r.status_code != 404
        r = getattr(off, method)(V1 + path, json=body)
        assert (r.status_code, r.json["errcode"]) == (404, "M_UNRECOGNIZED")
    assert len(smtp.messages) <= 1  # the one invitation sent while switched on
    # The v2 twins stay: Synapse uses them.
    assert off.post(f"{V2}/store-invite", json={}).json["errcode"] == "M_UNAUTHORIZED"
    # What homeservers still call on v1 stays too (the key validity URLs we hand out).
    assert off.get(f"{V1}/pubkey/isvalid?public_key=AAAA").json == {"valid": False}


# -- one invitation, one person ------------------------------------------------------


def sign_url_from_mail(client, smtp) -> str:
    """The `signurl` the landing page gives the web client, relative to our service."""
    page = client.get(relative(landing_link_from_mail(smtp.last())))
    query = query_of(web_client_link_from_page(page.text).replace("#/room/", ""))
    return relative(unquote(query["signurl"]))


def sign_as_element(client, sign_url, mxid):
    """POST to the signurl as matrix-js-sdk does: `mxid` added to its query, no body."""
    return client.post(sign_url + "&" + urlencode({"mxid": mxid}))


def admitted(app, token):
    with app.app_context():
        invitation = db.session.scalar(select(Invitation).filter_by(token=token))
        return invitation.admitted_mxid


CLAIRE = "@claire.martin-partenaire.example:agent.externe.tchap.gouv.fr"
MALLORY = "@mallory:matrix.example.org"


def test_an_invitation_admits_its_first_signer_only(app, client, smtp):
    token = store_invite(client).json["token"]
    sign_url = sign_url_from_mail(client, smtp)

    first = sign_as_element(client, sign_url, CLAIRE)
    assert first.status_code == 200, first.json
    assert first.json["mxid"] == CLAIRE and first.json["token"] == token
    again = sign_as_element(client, sign_url, CLAIRE)  # clients retry: same account, same answer
    assert (again.status_code, again.json) == (200, first.json)
    other = sign_as_element(client, sign_url, MALLORY)
    assert (other.status_code, other.json["errcode"]) == (403, "M_FORBIDDEN")
    assert "already accepted by another account" in other.json["error"]
    assert "signatures" not in other.json and CLAIRE not in other.json["error"]
    assert admitted(app, token) == CLAIRE
    # The JSON body of older clients and of v1 callers is held to the same rule.
    body = {**query_of(sign_url), "mxid": MALLORY}
    r = client.post(f"{V1}/sign-ed25519", json=body)
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")


def test_a_malformed_mxid_consumes_nothing(app, client, smtp):
    token = store_invite(client).json["token"]
    sign_url = sign_url_from_mail(client, smtp)
    r = sign_as_element(client, sign_url, "pas-un-mxid")
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    body = {"mxid": MALLORY, "token": token, "private_key": "!!"}
    r = client.post(f"{V1}/sign-ed25519", json=body)  # a wrong key admits nobody either
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    assert admitted(app, token) is None
    assert sign_as_element(client, sign_url, CLAIRE).status_code == 200


def test_a_bind_after_another_account_signed_delivers_nothing(app, client, smtp, fake_homeserver):
    token = store_invite(client).json["token"]
    assert sign_as_element(client, sign_url_from_mail(client, smtp), MALLORY).status_code == 200
    bind(client, smtp, fake_homeserver.user_id("claire"))  # the bind itself succeeds
    assert run_deliveries(app) == 0
    assert fake_homeserver.onbind_calls == []
    assert admitted(app, token) == MALLORY


def test_a_bind_of_the_signer_delivers_once(app, client, smtp, fake_homeserver):
    token = store_invite(client).json["token"]
    mxid = fake_homeserver.user_id("claire")
    assert sign_as_element(client, sign_url_from_mail(client, smtp), mxid).status_code == 200
    bind(client, smtp, mxid)
    assert run_deliveries(app) == 1
    [call] = fake_homeserver.onbind_calls
    assert call["mxid"] == mxid and call["invites"][0]["signed"]["token"] == token
    bind(client, smtp, mxid)  # binding again queues nothing more
    assert run_deliveries(app) == 0 and len(fake_homeserver.onbind_calls) == 1


def test_a_bind_admits_the_bound_account(app, client, smtp, fake_homeserver):
    token = store_invite(client).json["token"]
    sign_url = sign_url_from_mail(client, smtp)
    mxid = fake_homeserver.user_id("claire")
    bind(client, smtp, mxid)
    assert admitted(app, token) == mxid
    r = sign_as_element(client, sign_url, MALLORY)
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert sign_as_element(client, sign_url, mxid).status_code == 200
    assert run_deliveries(app) == 1


def test_a_queued_delivery_naming_another_account_is_dropped(app, client, smtp, fake_homeserver):
    token = store_invite(client).json["token"]
    bind(client, smtp, fake_homeserver.user_id("claire"))
    with app.app_context():  # a job left inconsistent by hand, or by a bug
        db.session.scalar(select(Invitation).filter_by(token=token)).admitted_mxid = MALLORY
        db.session.commit()
    assert run_deliveries(app) == 0
    assert fake_homeserver.onbind_calls == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Delivery)) == 0


@pytest.mark.parametrize("how", ["expired", "revoked"])
def test_sign_refuses_expired_and_revoked_invitations(app, client, smtp, clock, runner, how):
    token = store_invite(client).json["token"]
    sign_url = sign_url_from_mail(client, smtp)
    if how == "expired":
        clock.advance(days=31)
    else:
        assert runner.invoke(args=["invites", "revoke", token]).exit_code == 0
    r = sign_as_element(client, sign_url, CLAIRE)
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert how[:-1] in r.json["error"]  # "expire…", "revoke…"
    assert admitted(app, token) is None


def test_multi_use_invitations_keep_sydents_behaviour(make_app, smtp, fake_homeserver):
    app = make_app(INVITE_SINGLE_USE=False)
    client = app.test_client()
    token = store_invite(client).json["token"]
    sign_url = sign_url_from_mail(client, smtp)
    for mxid in (CLAIRE, MALLORY, CLAIRE):
        assert sign_as_element(client, sign_url, mxid).status_code == 200
    assert admitted(app, token) is None
    mxid = fake_homeserver.user_id("claire")
    bind(client, smtp, mxid)
    assert run_deliveries(app) == 1
    assert fake_homeserver.onbind_calls[0]["mxid"] == mxid


# -- races, against gunicorn (two workers, four threads each) ------------------------


@pytest.fixture
def served(db_url, smtp, tmp_path):
    """The service under gunicorn on the test database (SQLite file or PostgreSQL)."""
    env = service_env(
        db_url,
        tmp_path,
        PUBLIC_BASE_URL="https://id.tchap.test",
        MAIL_SERVER=smtp.host,
        MAIL_PORT=str(smtp.port),
        RATELIMIT_ENABLED="false",
        DELIVERY_WORKER_ENABLED="false",
        INTERNAL_API_SECRET="race-secret",
        RESTRICT_BINDS_TO_ROUTING="false",
    )
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "keys", "generate"],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
    migrate(env)
    engine = create_engine(db_url)
    with Gunicorn(env, ("-w", "2", "--threads", "4")) as server:
        yield server.base, engine
    engine.dispose()


def invite_over_http(base, smtp, address):
    """Store an invitation; return its token and the signurl its landing page gives."""
    body = {"medium": "email", "address": address, "room_id": ROOM, "sender": SENDER}
    r = requests.post(f"{base}{V1}/store-invite", json=body, timeout=10)
    assert r.status_code == 200, r.text
    [mail] = smtp.to(address)
    page = requests.get(base + relative(landing_link_from_mail(mail)), timeout=10)
    query = query_of(web_client_link_from_page(page.text).replace("#/room/", ""))
    return r.json()["token"], base + relative(unquote(query["signurl"]))


def at_once(calls):
    """Run the calls in threads released together, each on a connection opened before."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        session = requests.Session()
        session.get(call[1].split("/_matrix")[0] + "/health", timeout=10)  # connect first
        barrier.wait(timeout=30)
        return call[0](session, *call[1:])

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def sign_over_http(session, sign_url, mxid):
    r = session.post(sign_url + "&" + urlencode({"mxid": mxid}), timeout=30)
    return mxid, r.status_code, r.json()


def bind_over_http(session, base, address, mxid):
    body = {"address": address, "mxid": mxid}
    secret = {"Authorization": "Bearer race-secret"}
    r = session.post(
        f"{base}/_matrix/identity/internal/bind", json=body, headers=secret, timeout=30
    )
    return mxid, r.status_code, r.json()


def admission_of(engine, token):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT invitation.admitted_mxid, delivery.mxid FROM invitation"
                " LEFT JOIN delivery ON delivery.invitation_id = invitation.id"
                " WHERE invitation.token = :token"
            ),
            {"token": token},
        ).one()


def test_races_end_with_exactly_one_admitted_account(served, smtp):
    """Eight accounts sign at once; then signers race a bind of the address."""
    base, engine = served
    for round_ in range(3):
        token, sign_url = invite_over_http(base, smtp, f"race{round_}@partenaire.example")
        mxids = [f"@signer{i}:hs{i % 3}.example" for i in range(8)]

        answers = at_once([(sign_over_http, sign_url, mxid) for mxid in mxids])

        admitted = [mxid for mxid, status, _ in answers if status == 200]
        assert len(admitted) == 1, answers
        refused = [(status, body["errcode"]) for mxid, status, body in answers if status != 200]
        assert refused == [(403, "M_FORBIDDEN")] * 7, answers
        assert admission_of(engine, token) == (admitted[0], None)
        # The winner may sign again; the others stay refused.
        assert sign_over_http(requests, sign_url, admitted[0])[1] == 200
        loser = next(mxid for mxid in mxids if mxid != admitted[0])
        assert sign_over_http(requests, sign_url, loser)[1] == 403

    for round_ in range(3):
        address = f"bindrace{round_}@partenaire.example"
        token, sign_url = invite_over_http(base, smtp, address)
        bound = f"@bound{round_}:agent.externe.tchap.gouv.fr"
        signers = [f"@signer{i}:hs{i}.example" for i in range(5)]
        calls = [(sign_over_http, sign_url, mxid) for mxid in signers]
        calls.insert(2, (bind_over_http, base, address, bound))

        answers = at_once(calls)

        by_mxid = {mxid: (status, body) for mxid, status, body in answers}
        assert by_mxid.pop(bound)[0] == 200  # the bind itself always succeeds
        admitted, delivered_to = admission_of(engine, token)
        signed = [mxid for mxid, (status, _) in by_mxid.items() if status == 200]
        refused = [mxid for mxid, (status, _) in by_mxid.items() if status == 403]
        if admitted == bound:  # the bind won: one delivery, no signature
            assert (delivered_to, signed, len(refused)) == (bound, [], 5), answers
        else:  # a signer won: it alone signed, and the bind queued no delivery
            assert (signed, delivered_to, len(refused)) == ([admitted], None, 4), answers


def test_invitations_accepted_before_the_upgrade_keep_their_account(app):
    """Migration 0004: an invitation a bind accepted admits the account its delivery names."""
    with app.app_context():
        downgrade(directory=MIGRATIONS_DIR, revision="0003")
        rows = [  # id, token, accepted_at
            (1, "delivered", "2026-11-20 10:00:00"),
            (2, "pending", None),
        ]
        for id_, token, accepted_at in rows:
            db.session.execute(
                text(
                    "INSERT INTO invitation (id, token, medium, address, room_id, sender,"
                    " sender_verified, details, created_at, expires_at, accepted_at)"
                    " VALUES (:id, :token, 'email', 'a@b.example', '!r:hs', '@s:hs', false,"
                    " '{}', '2026-11-01 10:00:00', '2026-12-01 10:00:00', :accepted_at)"
                ),
                {"id": id_, "token": token, "accepted_at": accepted_at},
            )
        db.session.execute(
            text(
                "INSERT INTO delivery (invitation_id, destination, mxid, attempts,"
                " next_attempt_at, created_at) VALUES (1, 'hs.example', '@claire:hs.example', 0,"
                " '2026-11-20 10:00:00', '2026-11-20 10:00:00')"
            )
        )
        db.session.commit()
        upgrade(directory=MIGRATIONS_DIR)
        found = {
            invitation.token: (invitation.admitted_mxid, invitation.handed_over_at)
            for invitation in db.session.scalars(select(Invitation))
        }
    assert found["pending"] == (None, None)
    admitted_mxid, handed_over_at = found["delivered"]
    assert admitted_mxid == "@claire:hs.example"
    assert handed_over_at is not None and handed_over_at.isoformat().startswith("2026-11-20T10:00")


def test_the_invitation_policy_is_derived_once_per_signing_key(app):
    """Its landing secret costs a key derivation: not on every request, but again when
    the key is replaced (a key imported from Sydent)."""
    current = services(app)
    first = current.invitation_policy()
    assert current.invitation_policy() is first
    current.keys.replace(signedjson.key.generate_signing_key("1"))
    replaced = current.invitation_policy()
    assert replaced is not first and replaced.landing_secret != first.landing_secret
