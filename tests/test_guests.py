"""External guests: the invitation mail, the landing page, expiry, revocation, limits."""

import base64
import json
import re
from urllib.parse import quote
from urllib.parse import unquote
from urllib.parse import urlencode
from urllib.parse import urlsplit

import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func
from sqlalchemy import select

from identity import keys
from identity import worker
from identity.extensions import db
from identity.landing import secret_from
from identity.services import services
from identity.storage.models import Invitation
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import landing_link_from_mail
from tests.helpers import query_of
from tests.helpers import register_user
from tests.helpers import relative
from tests.helpers import validate_address
from tests.helpers import web_client_link_from_page

GUEST = "claire.martin@partenaire.example"  # unknown domain: the externals' platform
AGENT = "paul.durand@ac-versailles.fr"  # an académie: the education platform
ROOM = "!projetx:agent.dinum.tchap.gouv.fr"
SENDER = "@marie.dupont:agent.dinum.tchap.gouv.fr"
ZWSP = "\u200b"
ALIAS = "#arnaque:spam.example"


def store_invite(client, address=GUEST, **extra):
    body = {
        "medium": "email",
        "address": address,
        "room_id": ROOM,
        "sender": SENDER,
        "room_name": "Projet X",
        "sender_display_name": "Marie Dupont",
        **extra,
    }
    return client.post(f"{V1}/store-invite", json=body)


def invitation_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Invitation))


# -- the mail -----------------------------------------------------------------


def test_the_mail_tells_who_invites_where_until_when(client, smtp, clock):
    assert store_invite(client).status_code == 200
    mail = smtp.last()
    assert mail.message["Subject"] == (
        "Marie Dupont vous invite à rejoindre le salon « Projet X » sur Tchap"
    )
    text, html = mail.text(), mail.html()
    # French first, then English, in both parts.
    assert text.index("vous invite à rejoindre") < text.index("invites you to join")
    assert html.index("vous invite à rejoindre") < html.index("invites you to join")
    assert "messagerie instantanée sécurisée" in text and "secure instant messaging" in text
    # The expiry, 30 days after the fake clock's start, in both languages.
    assert "valable jusqu'au 24 décembre 2026" in text and "valid until 24 December 2026" in text
    assert "Vous ne connaissez pas Marie Dupont" in text and "You do not know Marie Dupont" in text
    # One button per language, to our landing page; no image to load. The other
    # links are the guest's refusal and report pages (tests/test_refusals.py).
    links = re.findall(r'href="([^"]+)"', html)
    buttons = [link for link in links if "/_matrix/identity/invitation/" in link]
    guest_links = [link for link in links if "/_matrix/identity/guest/" in link]
    assert len(buttons) == 2 and len(guest_links) == 4 and len(links) == 6
    assert "<img" not in html
    # The address never travels in the link.
    for link in links:
        assert "claire" not in unquote(link) and "partenaire" not in unquote(link)


def test_verified_sender_is_named(client, smtp, fake_homeserver):
    headers = auth(register_user(client, fake_homeserver, "marie"))
    sender = fake_homeserver.user_id("marie")
    body = {"medium": "email", "address": GUEST, "room_id": ROOM, "sender": sender}
    r = client.post(
        f"{V2}/store-invite", json=body | {"sender_display_name": "Marie"}, headers=headers
    )
    assert r.status_code == 200
    assert f"Marie ({sender})" in smtp.last().text().replace(ZWSP, "")
    store_invite(client, address="autre@partenaire.example")  # v1: not verified
    assert SENDER not in smtp.last().text().replace(ZWSP, "")


def test_wording_follows_the_platform(client, smtp):
    store_invite(client, GUEST)
    guest_mail = smtp.last().text()
    assert "Un compte invité sera créé pour vous" in guest_mail
    assert "A guest account will be created for you" in guest_mail
    store_invite(client, AGENT)
    agent_mail = smtp.last().text()
    assert "Connectez-vous avec votre adresse professionnelle, paul.durand@ac-versailles.fr" in (
        agent_mail
    )
    assert "compte invité" not in agent_mail


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # The last word that fits is kept whole, however far back the cut is...
        (
            "Coordination interministérielle du plan grand froid hiver 2026-2027",
            "Coordination interministérielle du plan…",
        ),
        ("Coordination interministérielledelaplanificationhivernale", "Coordination…"),
        # ...with no dangling punctuation; a single word longer than that is cut inside.
        (
            "Coordination des équipes de la DINUM, suivi hebdomadaire",
            "Coordination des équipes de la DINUM…",
        ),
        (
            "Anticonstitutionnellementinterministériellement",
            "Anticonstitutionnellementinterministéri…",
        ),
    ],
)
def test_long_room_names_are_cut_at_a_word(client, smtp, name, expected):
    store_invite(client, room_name=name)
    subject = smtp.last().message["Subject"]
    shown = re.search(r"« (.*) »", subject).group(1)
    assert shown == expected and len(shown) <= 40
    page = client.get(relative(landing_link_from_mail(smtp.last()))).text
    assert f"le salon «&nbsp;{expected}&nbsp;»" in page


def test_hostile_names_are_escaped_and_not_linked(client, smtp):
    r = store_invite(
        client,
        room_name="<b>x</b> https://evil.example/paie",
        sender_display_name="Support\r\nBcc: victim@example.org",
    )
    assert r.status_code == 200
    mail = smtp.last()
    raw = mail.raw.decode("utf-8", "replace")
    assert "\nBcc:" not in raw and mail.message["Bcc"] is None
    assert "\r" not in mail.message["Subject"] and "\n" not in mail.message["Subject"]
    html = mail.html()
    assert "<b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html.replace(ZWSP, "")
    assert "https://evil.example" not in html and "https://evil.example" not in mail.text()
    assert "evil.example" not in re.sub(ZWSP, "", " ".join(re.findall(r'href="([^"]+)"', html)))
    # What people read is still the name, once the invisible breaks are ignored.
    assert "https://evil.example/paie" in mail.text().replace(ZWSP, "")


def test_reinviting_works_and_says_so(client, smtp):
    store_invite(client)
    assert "nouvelle invitation" not in smtp.last().text()
    r = store_invite(
        client, room_id="!budget:agent.finances.tchap.gouv.fr", room_name="Budget",
        sender="@luc:agent.finances.tchap.gouv.fr", sender_display_name="Luc",
    )  # fmt: skip
    assert r.status_code == 200
    text = smtp.last().text()
    assert "celle-ci est une nouvelle invitation, pour le salon « Budget »" in text
    assert 'this is a new one, to the room "Budget"' in text


def sign_url_of(client, mail) -> str:
    page = client.get(relative(landing_link_from_mail(mail)))
    query = query_of(web_client_link_from_page(page.text).replace("#/room/", ""))
    return relative(unquote(query["signurl"]))


@pytest.mark.parametrize("how", ["expired", "revoked"])
def test_inviting_again_after_expiry_or_revocation_mails_a_fresh_working_link(
    app, client, smtp, clock, runner, fake_homeserver, how
):
    """The inviter invites the address again: a new invitation of its own (token, key,
    link) that works, while the old link keeps saying what became of the old one."""
    first = store_invite(client).json
    old_mail = smtp.last()
    old_sign_url = sign_url_of(client, old_mail)
    if how == "expired":
        clock.advance(days=31)
    else:
        runner.invoke(args=["invites", "revoke", first["token"]])
    second = store_invite(client)
    assert second.status_code == 200, second.json
    assert second.json["token"] != first["token"]
    assert second.json["public_keys"][1] != first["public_keys"][1]  # a key of its own
    new_mail = smtp.last()
    assert new_mail.message["Subject"] == old_mail.message["Subject"]
    text = new_mail.text()
    assert "Votre précédente invitation à ce salon n'est plus valable" in text
    assert "Your previous invitation to this room is no longer valid" in text
    assert "celle-ci est une nouvelle invitation" not in text  # none other is pending
    assert landing_link_from_mail(new_mail) != landing_link_from_mail(old_mail)
    # The old link says what became of the old invitation; the new one works.
    old_page = client.get(relative(landing_link_from_mail(old_mail)))
    said = "Cette invitation a expiré" if how == "expired" else "Cette invitation a été annulée"
    assert old_page.status_code == 410 and said in old_page.text
    assert client.get(relative(landing_link_from_mail(new_mail))).status_code == 200
    mxid = fake_homeserver.user_id("claire")
    signed = client.post(sign_url_of(client, new_mail) + "&" + urlencode({"mxid": mxid}))
    assert signed.status_code == 200 and signed.json["token"] == second.json["token"]
    refused = client.post(old_sign_url + "&" + urlencode({"mxid": mxid}))
    assert refused.status_code == 403
    # The bind delivers the new invitation only.
    sid = validate_address(client, smtp, GUEST, secret="b")
    body = {"sid": sid, "client_secret": "b", "mxid": mxid}
    assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    with app.app_context():
        assert worker.run_due(now=services(app).clock.now()) == 1
    [call] = fake_homeserver.onbind_calls
    assert [invite["signed"]["token"] for invite in call["invites"]] == [second.json["token"]]


def test_an_expired_invitation_to_another_room_is_not_replaced(client, smtp, clock):
    store_invite(client, room_id="!autre:agent.dinum.tchap.gouv.fr")
    clock.advance(days=31)
    store_invite(client)
    assert "précédente invitation" not in smtp.last().text()


def test_display_name_reveals_what_is_configured(make_app, smtp):
    client = make_app(INVITE_REVEAL_LOCAL=6, INVITE_REVEAL_DOMAIN=4).test_client()
    assert store_invite(client).json["display_name"] == "claire…@part…"
    assert store_invite(client, "jo@ab.fr").json["display_name"] == "j…@ab.f…"


# -- limits and blocklists ------------------------------------------------------


def test_an_address_gets_at_most_n_invitations_a_day(make_app, smtp, clock):
    app = make_app(RATELIMIT_ENABLED=True, INVITE_MAX_PER_ADDRESS_PER_DAY=2)
    client = app.test_client()
    for sender in ("@a:agent.dinum.tchap.gouv.fr", "@b:agent.culture.tchap.gouv.fr"):
        assert store_invite(client, sender=sender).status_code == 200
    clock.advance(hours=1)
    r = store_invite(client, sender="@c:agent.pm.tchap.gouv.fr")
    assert (r.status_code, r.json["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert r.json["retry_after_ms"] == 23 * 3600 * 1000
    assert len(smtp.messages) == 2 and invitation_count(app) == 2
    # Another address is not affected; the next day the address may be invited again.
    assert store_invite(client, "autre@partenaire.example").status_code == 200
    clock.advance(hours=23, seconds=1)
    assert store_invite(client).status_code == 200


def test_a_sender_has_its_own_daily_limit(make_app, smtp):
    client = make_app(RATELIMIT_ENABLED=True, INVITE_MAX_PER_SENDER_PER_DAY=2).test_client()
    assert store_invite(client, "a@partenaire.example").status_code == 200
    assert store_invite(client, "b@partenaire.example").status_code == 200
    r = store_invite(client, "c@partenaire.example")
    assert (r.status_code, r.json["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert r.json["retry_after_ms"] > 0 and len(smtp.messages) == 2
    other = store_invite(client, "c@partenaire.example", sender="@luc:agent.pm.tchap.gouv.fr")
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("setting", "request_change"),
    [
        ({"INVITE_BLOCKED_KEYWORDS": ["crypto"]}, {"room_name": "Gagnez en CRYPTO"}),
        ({"INVITE_BLOCKED_KEYWORDS": ["crypto"]}, {"sender_display_name": "Crypto Bot"}),
        ({"INVITE_BLOCKED_HOMESERVERS": ["spam.example"]}, {"sender": "@x:hs.spam.example"}),
        ({"INVITE_BLOCKED_HOMESERVERS": ["spam.example"]}, {"room_id": "!r:spam.example"}),
        ({"INVITE_BLOCKED_ROOMS": [ROOM]}, {}),
        ({"INVITE_BLOCKED_ROOMS": [ALIAS]}, {"room_alias": ALIAS}),
    ],
)  # fmt: skip
def test_blocklists_refuse_before_anything_is_stored(make_app, smtp, setting, request_change):
    app = make_app(**setting)
    r = store_invite(app.test_client(), **request_change)
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert smtp.messages == [] and invitation_count(app) == 0


# -- the landing page --------------------------------------------------------------


def landing(client, smtp, lang="fr", **headers):
    return client.get(relative(landing_link_from_mail(smtp.last(), lang)), headers=headers)


def test_landing_page_in_french_and_english(client, smtp):
    store_invite(client, room_avatar_url="mxc://agent.dinum.tchap.gouv.fr/abc", room_type="")
    page = landing(client, smtp)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert '<html lang="fr">' in page.text
    assert "Marie Dupont vous invite à rejoindre le salon «&nbsp;Projet X&nbsp;»" in page.text
    assert GUEST in page.text and "Créez votre compte Tchap avec exactement cette adresse" in (
        page.text
    )
    assert 'href="?lang=en" lang="en" hreflang="en"' in page.text
    assert "apps.apple.com" in page.text and "play.google.com" in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "<script" not in page.text  # works without JavaScript
    link = web_client_link_from_page(page.text)
    query = query_of(link.replace("#/room/", ""))
    assert link.startswith("https://www.tchap.gouv.fr/#/room/%21projetx")
    assert query["email"] == GUEST and query["room_name"] == "Projet X"
    assert query["inviter_name"] == "Marie Dupont"
    assert query["room_avatar_url"] == "mxc://agent.dinum.tchap.gouv.fr/abc"
    assert "sign-ed25519" in query["signurl"] and "private_key" in query["signurl"]

    english = landing(client, smtp, lang="en")
    assert '<html lang="en">' in english.text
    assert "Marie Dupont invites you to join the room “Projet X” on Tchap" in english.text
    # Without ?lang=, the browser's preference decides.
    bare = relative(landing_link_from_mail(smtp.last())).split("?")[0]
    negotiated = client.get(bare, headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert '<html lang="en">' in negotiated.text
    assert '<html lang="fr">' in client.get(bare).text


def test_landing_page_for_an_agent(client, smtp):
    store_invite(client, AGENT)
    page = landing(client, smtp)
    assert "Connectez-vous à Tchap, ou créez votre compte, avec votre adresse professionnelle" in (
        page.text
    )


def test_web_client_named_by_the_request(make_app, smtp):
    client = make_app(WEB_CLIENT_LOCATION_ALLOWLIST=["app.partenaire.example"]).test_client()
    store_invite(client, **{"org.matrix.web_client_location": "https://app.partenaire.example"})
    page = landing(client, smtp).text
    assert 'href="https://app.partenaire.example/#/room/' in page
    assert "www.tchap.gouv.fr/#/room" not in page
    store_invite(
        client, "b@partenaire.example", **{"org.matrix.web_client_location": "javascript:alert(1)"}
    )
    assert "javascript:" not in landing(client, smtp).text


def test_tampered_links_are_refused(client, smtp):
    store_invite(client)
    link = relative(landing_link_from_mail(smtp.last())).split("?")[0]
    page = client.get(link[:-3] + "xyz")
    assert page.status_code == 404 and "n'est pas valable" in page.text
    assert GUEST not in page.text


def test_expired_invitation(client, smtp, clock):
    store_invite(client)
    clock.advance(days=31)
    page = landing(client, smtp)
    assert page.status_code == 410 and "Cette invitation a expiré" in page.text
    assert "Demandez à Marie Dupont de vous inviter à nouveau" in page.text
    assert "Ouvrir Tchap dans mon navigateur" not in page.text


def test_revoked_invitation_behaves_as_expired(make_app, smtp, runner):
    app = make_app(INTERNAL_API_SECRET="k")
    client, runner = app.test_client(), app.test_cli_runner()
    token = store_invite(client).json["token"]
    internal = {"Authorization": "Bearer k"}
    query = {"medium": "email", "address": GUEST}
    assert client.get(f"{V1}/internal-info", query_string=query, headers=internal).json["invited"]
    result = runner.invoke(args=["invites", "revoke", token])
    assert "Revoked 1 invitation(s)." in result.output
    page = landing(client, smtp)
    assert page.status_code == 410 and "Cette invitation a été annulée" in page.text
    answer = client.get(f"{V1}/internal-info", query_string=query, headers=internal).json
    assert answer["invited"] is False


def test_a_bind_delivers_only_live_invitations(make_app, smtp, runner, fake_homeserver):
    app = make_app()
    client, runner = app.test_client(), app.test_cli_runner()
    kept = store_invite(client).json["token"]
    revoked = store_invite(client, room_id="!autre:agent.dinum.tchap.gouv.fr").json["token"]
    runner.invoke(args=["invites", "revoke", revoked])
    sid = validate_address(client, smtp, GUEST, secret="b")
    mxid = fake_homeserver.user_id("claire")
    assert client.post(f"{V1}/3pid/bind", json={"sid": sid, "client_secret": "b", "mxid": mxid})
    with app.app_context():
        assert worker.run_due(now=services(app).clock.now()) == 1
    [call] = fake_homeserver.onbind_calls
    assert [invite["signed"]["token"] for invite in call["invites"]] == [kept]


def test_accepted_invitation(client, smtp, fake_homeserver):
    store_invite(client)
    link = relative(landing_link_from_mail(smtp.last()))
    sid = validate_address(client, smtp, GUEST, secret="b")
    body = {"sid": sid, "client_secret": "b", "mxid": fake_homeserver.user_id("claire")}
    assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    page = client.get(link)
    assert page.status_code == 409 and "Cette invitation a déjà été acceptée" in page.text
    assert f'un compte Tchap du serveur <span class="address">{fake_homeserver.server_name}' in (
        page.text
    )


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_an_invitation_accepted_by_a_signature_says_on_which_server(client, smtp, lang):
    store_invite(client)
    link = relative(landing_link_from_mail(smtp.last(), lang))
    signurl = query_of(web_client_link_from_page(client.get(link).text).replace("#/room/", ""))[
        "signurl"
    ]
    mxid = "@quelquun:matrix.autre.example"
    assert client.post(relative(signurl) + "&mxid=" + quote(mxid)).status_code == 200

    page = client.get(link)

    assert page.status_code == 409
    text = re.sub(r"<[^>]+>", "", page.text)
    if lang == "fr":
        assert "Cette invitation a déjà été acceptée" in text
        assert "par un compte Tchap du serveur matrix.autre.example" in text
        assert "Une invitation ne permet qu'à une seule personne de rejoindre le salon" in text
        assert "Demandez à Marie Dupont de vous inviter à nouveau" in text
    else:
        assert "This invitation has already been accepted" in text
        assert "by a Tchap account on the server matrix.autre.example" in text
        assert "Ask Marie Dupont to invite you again" in text
    assert mxid not in page.text and "quelquun" not in page.text
    # Its account may come back through the page: the button still opens the room.
    assert (
        web_client_link_from_page(page.text)
        .split("?")[0]
        .endswith("/#/room/%21projetx%3Aagent.dinum.tchap.gouv.fr")
    )


def signurl_query(page_text: str) -> dict[str, str]:
    link = web_client_link_from_page(page_text)
    return query_of(unquote(query_of(link.replace("#/room/", ""))["signurl"]))


def test_the_landing_link_is_opaque(client, smtp):
    store_invite(client)
    link = landing_link_from_mail(smtp.last())
    token = urlsplit(link).path.rsplit("/", 1)[1]
    private_key = signurl_query(client.get(relative(link)).text)["private_key"]
    seed = base64.urlsafe_b64decode(private_key + "=" * (-len(private_key) % 4))
    # Whichever way its parts are decoded, the token shows neither the key nor the id.
    for part in token.split("."):
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        assert private_key.encode() not in raw and seed not in raw
        assert not _is_json(raw)  # the readable format was a JSON list [id, key]


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:  # UnicodeDecodeError is one
        return False
    return True


def test_links_mailed_before_encryption_keep_working(app, config, client, smtp):
    token = store_invite(client).json["token"]
    page = client.get(relative(landing_link_from_mail(smtp.last())))
    signed = signurl_query(page.text)
    with app.app_context():
        invitation_id = db.session.scalar(select(Invitation.id).filter_by(token=token))
    # What the mails of earlier versions carried: [id, private key], signed, readable.
    secret = secret_from(None, keys.read(config["SIGNING_KEY_PATH"]))
    legacy = URLSafeTimedSerializer(secret, salt="invitation-landing").dumps(
        [invitation_id, signed["private_key"]]
    )

    old = client.get(f"/_matrix/identity/invitation/{legacy}?lang=fr")

    assert old.status_code == 200 and "Marie Dupont vous invite" in old.text
    assert signurl_query(old.text) == signed
    # One character of the signature changed (not the last: base64 may ignore its low bits).
    tampered = legacy[:-5] + ("A" if legacy[-5] != "A" else "B") + legacy[-4:]
    altered = client.get(f"/_matrix/identity/invitation/{tampered}")
    assert altered.status_code == 404
