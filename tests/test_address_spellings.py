"""Every spelling of an address: where its mail goes, which domains are accepted, and
how lookups find its binding (v1, bulk, v2 hashed) whichever spelling the caller uses."""

import pytest

from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import code_from_mail
from tests.helpers import register_user
from tests.helpers import request_code
from tests.helpers import validate_address
from tests.test_api_binding import bind
from tests.test_api_binding import sha256_hash

MXID = "@jean:agent.tchap.gouv.fr"
GUEST_INVITE = {"medium": "email", "room_id": "!projet:a.fr", "sender": "@marie:a.fr"}


@pytest.fixture
def utf8_config(config, smtputf8_sink):
    """The app's mail server offers SMTPUTF8 (mailboxes such as straße@…)."""
    smtputf8_sink.clear()
    config["MAIL_PORT"] = smtputf8_sink.port
    return config


# -- where mail goes: the mailbox as written, its domain normalised ------------------


def test_code_goes_to_the_mailbox_as_written(utf8_config, client, smtputf8_sink):
    r = request_code(client, "Straße@Exämple.FR")
    assert r.status_code == 200, r.json
    mail = smtputf8_sink.last()
    assert mail.recipients == ["Straße@xn--exmple-cua.fr"]  # not strasse@…
    # Matching stays case-insensitive: the same session, whatever the case.
    again = request_code(client, "STRASSE@exämple.fr", attempt=2)
    assert again.json["sid"] == r.json["sid"]
    assert smtputf8_sink.last().recipients == ["STRASSE@xn--exmple-cua.fr"]
    body = {"sid": r.json["sid"], "client_secret": "s3cret", "token": code_from_mail(mail)}
    assert client.post(f"{V1}/validate/email/submitToken", json=body).status_code == 200


def test_ascii_mailbox_keeps_its_case(client, smtp):
    assert request_code(client, " Marie.Dupont@AC-Versailles.FR ").status_code == 200
    assert smtp.last().recipients == ["Marie.Dupont@ac-versailles.fr"]


def test_invitation_goes_to_the_mailbox_as_written(utf8_config, client, smtputf8_sink):
    body = {**GUEST_INVITE, "address": "Straße@Exämple.fr"}
    r = client.post(f"{V1}/store-invite", json=body)
    assert r.status_code == 200, r.json
    assert smtputf8_sink.last().recipients == ["Straße@xn--exmple-cua.fr"]
    # The same address in another case is the same guest, already invited.
    body["address"] = "strasse@EXÄMPLE.fr"
    assert client.post(f"{V1}/store-invite", json=body).status_code == 200
    assert smtputf8_sink.last().recipients == ["strasse@xn--exmple-cua.fr"]


# -- special-use domains (RFC 6761 and friends) ----------------------------------------

SPECIAL_USE = [
    "alice@staging.test",
    "bob@tchap.localhost",
    "carol@mail.example",
    "dave@nowhere.invalid",
    "erin@printer.local",
    "frank@LOCALHOST",
    "grace@ｈｏｓｔ．ｔｅｓｔ",  # fullwidth letters and dot: host.test
]


@pytest.mark.parametrize("address", SPECIAL_USE)
def test_special_use_domains_are_accepted_by_default(client, smtp, address):
    r = request_code(client, address)
    assert r.status_code == 200, r.json
    r = client.post(f"{V1}/store-invite", json={**GUEST_INVITE, "address": address})
    assert r.status_code == 200, r.json
    assert len(smtp.messages) == 2


@pytest.mark.parametrize("address", SPECIAL_USE)
def test_operators_may_refuse_special_use_domains(make_app, smtp, address):
    client = make_app(REFUSE_SPECIAL_USE_DOMAINS=True).test_client()
    r = request_code(client, address)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_EMAIL")
    r = client.post(f"{V1}/store-invite", json={**GUEST_INVITE, "address": address})
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_EMAIL")
    assert smtp.messages == []


def test_the_setting_is_per_app(make_app, smtp):
    """Two apps in one process, each with its own choice: nothing leaks between them
    (neither through email_validator's module globals nor through our memo)."""
    strict = make_app(REFUSE_SPECIAL_USE_DOMAINS=True).test_client()
    lenient = make_app().test_client()
    for _ in range(2):
        assert request_code(lenient, "a@staging.test").status_code == 200
        assert request_code(strict, "a@staging.test").status_code == 400
        assert request_code(strict, "a@ac-lyon.fr").status_code == 200
    assert request_code(lenient, "pas une adresse@staging.test").status_code == 400


# -- lookups: Unicode or punycode spelling of an internationalised domain ------------

UNICODE = "Jean@exämple.fr"
PUNYCODE = "jean@xn--exmple-cua.fr"


@pytest.fixture
def bound(client, smtp):
    sid = validate_address(client, smtp, UNICODE)
    assert bind(client, sid, MXID).status_code == 200


@pytest.mark.parametrize(
    "spelling", ["jean@exämple.fr", "Jean@EXÄMPLE.fr", PUNYCODE, "JEAN@XN--EXMPLE-CUA.FR"]
)
def test_v1_lookup_finds_every_spelling(bound, client, spelling):
    r = client.get(f"{V1}/lookup", query_string={"medium": "email", "address": spelling})
    assert r.json["mxid"] == MXID
    assert r.json["address"] == PUNYCODE


@pytest.mark.parametrize("spelling", ["jean@exämple.fr", "JEAN@EXÄMPLE.FR", PUNYCODE])
def test_bulk_lookup_finds_every_spelling(bound, client, spelling):
    threepids = [["email", spelling], ["email", "x@exämple.fr"], ["email", "jean@exemple.fr"]]
    r = client.post(f"{V1}/bulk_lookup", json={"threepids": threepids})
    assert r.json == {"threepids": [["email", PUNYCODE, MXID]]}


def test_v2_lookup_finds_every_spelling(bound, client, fake_homeserver):
    headers = auth(register_user(client, fake_homeserver))
    pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
    spellings = ["jean@exämple.fr", PUNYCODE]
    hashes = [sha256_hash(s, pepper) for s in spellings]
    body = {"addresses": [*hashes, sha256_hash("x@exämple.fr", pepper)], "algorithm": "sha256",
            "pepper": pepper}  # fmt: skip
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert r.json == {"mappings": {h: MXID for h in hashes}}
    body = {"addresses": [f"{s} email" for s in spellings], "algorithm": "none", "pepper": pepper}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert r.json == {"mappings": {f"{s} email": MXID for s in spellings}}


def test_v2_lookup_of_many_hashes_finds_the_unicode_spelling(bound, client, fake_homeserver):
    """More hashes than one batch (500): the Unicode spellings are read, not probed."""
    headers = auth(register_user(client, fake_homeserver))
    pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
    known = sha256_hash("jean@exämple.fr", pepper)
    unknown = [sha256_hash(f"x{i}@exämple.fr", pepper) for i in range(600)]
    body = {"addresses": [*unknown, known], "algorithm": "sha256", "pepper": pepper}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert r.json == {"mappings": {known: MXID}}


def test_v2_lookup_of_one_among_many_unicode_spellings(bound, client, smtp, fake_homeserver):
    for name in ("zoe", "leo"):
        sid = validate_address(client, smtp, f"{name}@exämple.fr", secret=name)
        body = {"sid": sid, "client_secret": name, "mxid": f"@{name}:a.fr"}
        assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    headers = auth(register_user(client, fake_homeserver))
    pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
    for spelling, mxid in (("jean@exämple.fr", MXID), ("zoe@exämple.fr", "@zoe:a.fr")):
        known = sha256_hash(spelling, pepper)
        body = {"addresses": [known], "algorithm": "sha256", "pepper": pepper}
        r = client.post(f"{V2}/lookup", json=body, headers=headers)
        assert r.json == {"mappings": {known: mxid}}


def test_v2_lookup_of_the_unicode_spelling_survives_a_pepper_rotation(
    bound, client, runner, fake_homeserver
):
    headers = auth(register_user(client, fake_homeserver))
    for _ in range(2):  # into the second slot, then back into the first
        assert runner.invoke(args=["lookup", "rotate-pepper"]).exit_code == 0
        pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
        known = sha256_hash("jean@exämple.fr", pepper)
        body = {"addresses": [known], "algorithm": "sha256", "pepper": pepper}
        r = client.post(f"{V2}/lookup", json=body, headers=headers)
        assert r.json == {"mappings": {known: MXID}}


def test_unbind_removes_every_spelling(bound, client, smtp):
    sid = validate_address(client, smtp, UNICODE, secret="again")
    body = {"sid": sid, "client_secret": "again", "mxid": MXID,
            "threepid": {"medium": "email", "address": "jean@exämple.fr"}}  # fmt: skip
    assert client.post(f"{V1}/3pid/unbind", json=body).status_code == 200
    r = client.get(f"{V1}/lookup", query_string={"medium": "email", "address": "jean@exämple.fr"})
    assert r.json == {}
