"""Mail transport (plain, STARTTLS, implicit TLS, verified) and Sydent-layout templates."""

import email
import email.policy
import os
import re
import ssl

import jinja2
import pytest
import trustme
from sqlalchemy import func
from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import EphemeralKey
from identity.storage.models import Invitation
from identity.storage.models import ValidationSession
from testing.smtp import SmtpSink
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import code_from_mail
from tests.helpers import register_user
from tests.helpers import relative
from tests.helpers import request_code

SYDENT_TEMPLATES = os.path.join(os.path.dirname(__file__), "fixtures", "sydent_templates")
ADDRESS = "agent@interieur.gouv.fr"


# -- TLS ------------------------------------------------------------------------


class TlsSink(SmtpSink):
    def __init__(self, ca: trustme.CA, *, implicit: bool) -> None:
        super().__init__()
        self.ca, self.implicit = ca, implicit

    def controller_options(self) -> dict:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        if self.implicit:
            return {"ssl_context": context}
        return {"tls_context": context, "require_starttls": True}


@pytest.fixture(scope="module")
def trusted_ca(tmp_path_factory):
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_mail_over_verified_tls(make_app, trusted_ca, implicit):
    ca, ca_file = trusted_ca
    sink = TlsSink(ca, implicit=implicit).start()
    try:
        client = make_app(
            MAIL_PORT=sink.port,
            MAIL_CA_FILE=ca_file,
            MAIL_USE_TLS=not implicit,
            MAIL_USE_SSL=implicit,
        ).test_client()
        r = request_code(client, ADDRESS)
        assert r.status_code == 200, r.json
        assert sink.last().recipients == [ADDRESS]
    finally:
        sink.stop()


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_untrusted_certificate_is_refused(make_app, trusted_ca, implicit):
    _, ca_file = trusted_ca
    sink = TlsSink(trustme.CA(), implicit=implicit).start()  # signed by a stranger
    try:
        client = make_app(
            MAIL_PORT=sink.port,
            MAIL_CA_FILE=ca_file,
            MAIL_USE_TLS=not implicit,
            MAIL_USE_SSL=implicit,
        ).test_client()
        r = request_code(client, ADDRESS)
        assert (r.status_code, r.json["errcode"]) == (500, "M_EMAIL_SEND_ERROR")
        assert sink.messages == []
    finally:
        sink.stop()


# -- Sydent-layout template directories -------------------------------------------


@pytest.fixture
def sydent_templates(config):
    config["TEMPLATES_PATH"] = SYDENT_TEMPLATES
    config["DEFAULT_BRAND"] = "tchap"


def test_sydent_template_is_sent_byte_for_byte(sydent_templates, client, smtp):
    r = request_code(client, ADDRESS)
    assert r.status_code == 200
    raw = smtp.last().raw.replace(b"\r\n", b"\n")
    received = email.message_from_bytes(raw, policy=email.policy.compat32)
    token = re.search(rb"Votre code : (\S+)", raw).group(1).decode()
    link = re.search(rb"Lien : (\S+)", raw).group(1).decode()
    boundary = received.get_boundary()
    expected = (
        jinja2.Environment(loader=jinja2.FileSystemLoader(SYDENT_TEMPLATES), autoescape=True)
        .get_template("tchap/verification_template.eml.j2")
        .render(
            date=received["Date"],
            to=ADDRESS,
            messageid=received["Message-ID"],
            multipart_boundary=boundary,
            token=token,
            link=link,
            **{"from": "Tchap <noreply@tchap.test>"},
        )
    )
    assert raw.rstrip(b"\n") == expected.encode().rstrip(b"\n")
    assert boundary and len(boundary) >= 24
    assert "&amp;" in expected  # autoescape on, as Sydent renders


def test_brand_parameter_picks_the_brand_folder(sydent_templates, client, smtp):
    client.post(
        f"{V1}/validate/email/requestToken?brand=other",
        json={"client_secret": "s3cret", "email": ADDRESS, "send_attempt": 1},
    )
    assert smtp.last().message["Subject"] == "Other brand"
    client.post(
        f"{V1}/validate/email/requestToken?brand=unknown",
        json={"client_secret": "s3cret2", "email": ADDRESS, "send_attempt": 1},
    )
    assert smtp.last().message["Subject"] == "Code Tchap"  # falls back to DEFAULT_BRAND


def test_sydent_verify_response_page(sydent_templates, client, smtp):
    request_code(client, ADDRESS)
    link = re.search(rb"Lien : (\S+)", smtp.last().raw).group(1).decode()
    r = client.get(relative(link))
    assert r.get_data(as_text=True).strip() == (
        "<html><body><p>Tchap: Verification successful! Please return to your Matrix "
        "client to continue.</p></body></html>"
    )


def test_sydent_invite_template_gets_sydents_variables(sydent_templates, client, smtp):
    body = {
        "medium": "email",
        "address": "guest@partner.example",
        "room_id": "!r:hs.example",
        "sender": "@marie:hs.example",
        "sender_display_name": "Marie <script>",
        "room_name": "Projet X",
    }
    assert client.post(f"{V1}/store-invite", json=body).status_code == 200
    mail = smtp.last()
    html = mail.raw.decode()
    assert "Marie &lt;script&gt;" in html and "<script>" not in html
    assert "(Projet X)" in html
    assert "email=guest%40partner.example" in html
    assert "Marie" in mail.message["Subject"]


# -- the embedded mode ---------------------------------------------------------------


def test_without_mail_server_the_mail_is_printed(make_app, capsys):
    client = make_app(MAIL_SERVER="", LOG_FORMAT="text").test_client()
    assert request_code(client, ADDRESS).status_code == 200
    [line] = [line for line in capsys.readouterr().err.splitlines() if "identity.mailer" in line]
    assert "MAIL_SERVER is not set: mail NOT sent to a…@interieur.gouv.fr" in line
    assert "/validate/email/submitToken?sid=" in line  # the link, whole, to follow


def test_the_raw_mail_is_printed_when_asked(make_app, capsys):
    client = make_app(MAIL_SERVER="", MAIL_PRINT_RAW=True).test_client()
    assert request_code(client, ADDRESS).status_code == 200
    printed = capsys.readouterr().err
    assert "MAIL_SERVER is not set" in printed and "To: agent@interieur.gouv.fr" in printed


# -- mailboxes with a non-ASCII local part (SMTPUTF8, RFC 6531) -------------------

NON_ASCII = "Ñandú@Example.FR"
INVITE = {"medium": "email", "room_id": "!projet:a.fr", "room_name": "Projet X"}


@pytest.fixture
def utf8_client(make_app, smtputf8_sink):
    """A client of the service whose mail server offers SMTPUTF8."""
    smtputf8_sink.clear()
    return make_app(MAIL_PORT=smtputf8_sink.port).test_client()


def store_invite(client, address, *, sender, prefix=V1, headers=None):
    body = {**INVITE, "address": address, "sender": sender}
    return client.post(f"{prefix}/store-invite", json=body, headers=headers)


def test_code_to_a_non_ascii_mailbox_goes_out_with_smtputf8(utf8_client, smtputf8_sink):
    r = request_code(utf8_client, NON_ASCII)
    assert r.status_code == 200, r.json
    mail = smtputf8_sink.last()
    # The mailbox as written, its domain normalised.
    assert mail.recipients == ["Ñandú@example.fr"]
    assert mail.message["To"] == "Ñandú@example.fr"
    body = {"sid": r.json["sid"], "client_secret": "s3cret", "token": code_from_mail(mail)}
    r = utf8_client.post(f"{V1}/validate/email/submitToken", json=body)
    assert r.status_code == 200, r.json
    r = utf8_client.get(f"{V1}/3pid/getValidated3pid", query_string=body)
    assert r.json["address"] == "ñandú@example.fr"


@pytest.mark.parametrize("prefix", [V1, V2])
def test_invitation_to_a_non_ascii_mailbox_goes_out_with_smtputf8(
    utf8_client, smtputf8_sink, fake_homeserver, prefix
):
    headers, sender = None, "@marie:a.fr"
    if prefix == V2:
        headers = auth(register_user(utf8_client, fake_homeserver, "marie"))
        sender = fake_homeserver.user_id("marie")
    r = store_invite(utf8_client, "José@example.fr", sender=sender, prefix=prefix, headers=headers)
    assert r.status_code == 200, r.json
    assert smtputf8_sink.last().recipients == ["José@example.fr"]


@pytest.mark.parametrize("prefix", [V1, V2])
def test_without_smtputf8_a_non_ascii_mailbox_is_refused_and_nothing_is_stored(
    app, client, smtp, fake_homeserver, prefix
):
    headers, sender = None, "@marie:a.fr"
    if prefix == V2:
        headers = auth(register_user(client, fake_homeserver, "marie"))
        sender = fake_homeserver.user_id("marie")
    r = request_code(client, NON_ASCII, prefix=prefix, headers=headers)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_EMAIL")
    r = store_invite(client, "josé@example.fr", sender=sender, prefix=prefix, headers=headers)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_EMAIL")
    assert smtp.messages == []
    with app.app_context():
        for model in (ValidationSession, Invitation, EphemeralKey):
            assert db.session.scalar(select(func.count()).select_from(model)) == 0
    # An ASCII mailbox still goes out through the same server.
    r = request_code(client, "jose@example.fr", prefix=prefix, headers=headers)
    assert r.status_code == 200
    assert smtp.last().recipients == ["jose@example.fr"]


def test_sydent_template_to_a_non_ascii_mailbox(sydent_templates, make_app, smtputf8_sink):
    smtputf8_sink.clear()
    client = make_app(MAIL_PORT=smtputf8_sink.port).test_client()
    assert request_code(client, NON_ASCII).status_code == 200
    mail = smtputf8_sink.last()
    assert mail.recipients == ["Ñandú@example.fr"]
    assert "Ñandú@example.fr" in mail.message["To"]
