"""Steps many tests take through the HTTP API: register, validate an address, read mail."""

import html
import re
from urllib.parse import parse_qs
from urllib.parse import urlsplit

V1 = "/_matrix/identity/api/v1"
V2 = "/_matrix/identity/v2"


def register_user(client, fake_homeserver, localpart: str = "alice") -> str:
    """Register through OpenID with the fake homeserver; return our access token."""
    r = client.post(
        f"{V2}/account/register",
        json={
            "access_token": fake_homeserver.issue_openid_token(localpart),
            "token_type": "Bearer",
            "matrix_server_name": fake_homeserver.server_name,
            "expires_in": 3600,
        },
    )
    assert r.status_code == 200, r.json
    return r.json["token"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def request_code(client, address, *, secret="s3cret", attempt=1, prefix=V1, headers=None, **extra):
    body = {"client_secret": secret, "email": address, "send_attempt": attempt, **extra}
    return client.post(f"{prefix}/validate/email/requestToken", json=body, headers=headers)


def code_from_mail(mail) -> str:
    """The code as people read it in the received mail (``ABCD-EFGH``)."""
    match = re.search(r"^\s+([A-Z0-9]{4}-[A-Z0-9]{4})\s*$", mail.text(), re.MULTILINE)
    assert match, mail.text()
    return match.group(1)


def link_from_mail(mail) -> str:
    match = re.search(r"(https://\S+submitToken\?\S+)", mail.text())
    assert match, mail.text()
    return match.group(1)


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def validate_address(client, smtp, address, *, secret="s3cret", prefix=V1, headers=None) -> str:
    """Prove ownership of `address` with the code from the received mail; return the sid."""
    r = request_code(client, address, secret=secret, prefix=prefix, headers=headers)
    assert r.status_code == 200, r.json
    sid = r.json["sid"]
    code = code_from_mail(smtp.last())
    body = {"sid": sid, "client_secret": secret, "token": code}
    r = client.post(f"{prefix}/validate/email/submitToken", json=body, headers=headers)
    assert r.status_code == 200, r.json
    return sid


def landing_link_from_mail(mail, lang: str = "fr") -> str:
    """The invitation's landing page link, as the French (or English) button gives it."""
    links = re.findall(r"(https?://\S+/_matrix/identity/invitation/\S+)", mail.text())
    assert len(links) == 2, mail.text()
    return links[0] if lang == "fr" else links[1]


def web_client_link_from_page(page: str) -> str:
    """The landing page's button to the web client, unescaped."""
    match = re.search(r'href="(https://www\.tchap\.gouv\.fr/#/room/[^"]+)"', page)
    assert match, page
    return html.unescape(match.group(1))


# A guest invited into a room by an agent: the store-invite body the page tests share.
GUEST_INVITATION = {
    "medium": "email",
    "address": "claire.martin@partenaire.example",
    "room_id": "!projetx:agent.dinum.tchap.gouv.fr",
    "sender": "@marie.dupont:agent.dinum.tchap.gouv.fr",
    "sender_display_name": "Marie Dupont",
}


def invite_guest(client, smtp, *, lang: str = "fr", **fields: str) -> str:
    """Store an invitation through the v1 API; the landing link of the mail it sent."""
    r = client.post(f"{V1}/store-invite", json={**GUEST_INVITATION, **fields})
    assert r.status_code == 200, r.json
    return landing_link_from_mail(smtp.last(), lang)
