"""Interoperability with a real Synapse, end to end on loopback.

Each test is one scenario and builds what it needs (users, rooms, addresses) itself;
they share one Synapse and one instance of our service for the session.
"""

import re
import time
import uuid
from urllib.parse import quote
from urllib.parse import unquote
from urllib.parse import urlencode

import pytest

from testing.processes import wait_until
from tests.helpers import code_from_mail
from tests.helpers import landing_link_from_mail
from tests.helpers import query_of
from tests.helpers import relative
from tests.helpers import web_client_link_from_page
from tests.interop.synapse import CLIENT
from tests.interop.synapse import V1
from tests.interop.synapse import V2
from tests.interop.synapse import MatrixUser

pytestmark = pytest.mark.interop


def guest_address(tag: str) -> str:
    """A fresh address on the externals' platform (the default route: Synapse)."""
    return f"{tag}-{uuid.uuid4().hex[:8]}@guest.example"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def our_token(synapse, identity_server, user: MatrixUser) -> str:
    """Register `user` with our service through an OpenID token from Synapse."""
    return identity_server.register(synapse.openid_token(user))


def mails_to(smtp, address: str, count: int = 1) -> list:
    return wait_until(
        lambda: len(smtp.to(address)) >= count and smtp.to(address),
        timeout=15,
        what=f"{count} mail(s) to {address}",
    )


def validate_with_us(identity_server, smtp, token: str, address: str, secret: str) -> str:
    """Prove ownership of `address` to our service with the mailed code; return the sid."""
    before = len(smtp.to(address))
    r = identity_server.post(
        f"{V2}/validate/email/requestToken",
        json={"client_secret": secret, "email": address, "send_attempt": 1},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    sid = r.json()["sid"]
    code = code_from_mail(mails_to(smtp, address, before + 1)[-1])
    r = identity_server.post(
        f"{V2}/validate/email/submitToken",
        json={"sid": sid, "client_secret": secret, "token": code},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    assert r.json().get("success") is True, r.text
    return sid


def invite_by_email(synapse, identity_server, smtp, inviter: MatrixUser, address: str) -> str:
    """`inviter` invites `address` into a new room through Synapse; return the room ID."""
    room_id = synapse.create_room(inviter)
    token = our_token(synapse, identity_server, inviter)
    r = synapse.invite_email(inviter, room_id, address, identity_server.host, token)
    assert r.status_code == 200, r.text
    mails_to(smtp, address)
    return room_id


def lookup(identity_server, address: str) -> dict:
    r = identity_server.get(f"{V1}/lookup", params={"medium": "email", "address": address})
    assert r.status_code == 200, r.text
    return r.json()


def requests_seen(identity_server) -> str:
    """Our access log: the requests that reached us (Synapse's calls included)."""
    return identity_server.log_file.read_text(errors="replace")


def statuses(calls: str, method: str, path: str) -> list[int]:
    """The HTTP statuses we answered to `method path` in an access-log excerpt."""
    pattern = rf'"{method} {re.escape(path)}(?:\?\S*)? HTTP/[\d.]+" (\d{{3}})'
    return [int(status) for status in re.findall(pattern, calls)]


def answered(identity_server, since: int, method: str, path: str, timeout: float = 5) -> list:
    """The statuses we answered to `method path` since log offset `since`.

    gunicorn logs a request once its response is sent, so the caller may already have
    its answer: wait a little for the line, and return [] if none comes.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(requests_seen(identity_server)[since:], method, path)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# Known incompatibilities of our service with Synapse, reported as expected failures
# only when exactly that symptom is observed; every other step of the scenario asserts.
def bind_through_synapse(synapse, identity_server, user, token, sid, client_secret):
    """The user asks Synapse to bind the address they validated with us."""
    body = {
        "id_server": identity_server.host,
        "id_access_token": token,
        "sid": sid,
        "client_secret": client_secret,
    }
    return synapse.request("POST", f"{CLIENT}/account/3pid/bind", user, json=body)


def test_openid_registration(synapse, identity_server):
    """1. A Synapse user registers with us through an OpenID token from Synapse."""
    alice = synapse.register()
    openid = synapse.openid_token(alice)
    assert openid["matrix_server_name"] == synapse.server_name
    token = identity_server.register(openid)
    r = identity_server.get(f"{V2}/account", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == alice.user_id
    # A token Synapse never issued: Synapse does not vouch for it, we refuse it.
    forged = {**openid, "access_token": "forged" + uuid.uuid4().hex}
    r = identity_server.post(f"{V2}/account/register", json=forged)
    assert r.status_code == 401, r.text
    assert r.json()["errcode"] == "M_UNAUTHORIZED"
    r = identity_server.get(f"{V2}/account", headers=bearer("forged" + uuid.uuid4().hex))
    assert r.status_code == 401, r.text


def test_email_invite_through_synapse(synapse, identity_server, smtp):
    """2. Synapse looks the address up, stores the invite with us; we mail the guest."""
    alice = synapse.register()
    token = our_token(synapse, identity_server, alice)
    room_id = synapse.create_room(alice)
    address = guest_address("invitee")
    log_start = len(requests_seen(identity_server))

    r = synapse.invite_email(alice, room_id, address, identity_server.host, token)
    assert r.status_code == 200, r.text

    assert answered(identity_server, log_start, "POST", f"{V2}/store-invite") == [200]
    (mail,) = mails_to(smtp, address)
    assert address in mail.recipients
    state = synapse.room_state(alice, room_id)
    invites = [e for e in state if e["type"] == "m.room.third_party_invite"]
    assert len(invites) == 1, invites
    content = invites[0]["content"]
    ours = identity_server.public_key()
    assert content["public_key"] == ours
    assert ours in {k["public_key"] for k in content["public_keys"]}
    for key in content["public_keys"]:
        assert key["key_validity_url"].startswith(identity_server.base + "/_matrix/identity/")
    # Before storing the invite, Synapse looks the address up with us.
    hash_details = answered(identity_server, log_start, "GET", f"{V2}/hash_details")
    assert hash_details == [200], requests_seen(identity_server)[log_start:]
    assert answered(identity_server, log_start, "POST", f"{V2}/lookup") == [200]


def test_bind_through_synapse_delivers_the_invitation(synapse, identity_server, smtp):
    """3. B validates with us, binds through Synapse; our onbind makes Synapse invite B."""
    alice, bob = synapse.register(), synapse.register()
    address = guest_address("bound")
    room_id = invite_by_email(synapse, identity_server, smtp, alice, address)
    bob_token = our_token(synapse, identity_server, bob)
    sid = validate_with_us(identity_server, smtp, bob_token, address, "bind-secret-3")
    log_start = len(requests_seen(identity_server))

    r = bind_through_synapse(synapse, identity_server, bob, bob_token, sid, "bind-secret-3")
    assert r.status_code == 200, r.text
    assert lookup(identity_server, address).get("mxid") == bob.user_id

    wait_until(
        lambda: synapse.membership(alice, room_id, bob.user_id) == "invite",
        timeout=30,
        what="Synapse to invite B after our onbind",
    )
    # Synapse asked whether the key that signed the invitation is still valid.
    assert answered(identity_server, log_start, "GET", f"{V2}/pubkey/isvalid") == [200]
    signed = synapse.member_event(alice, room_id, bob.user_id)["third_party_invite"]["signed"]
    assert signed["mxid"] == bob.user_id
    assert identity_server.host in signed["signatures"]
    # B sees the invitation too, and can accept it.
    r = synapse.request("POST", f"{CLIENT}/rooms/{room_id}/join", bob, json={})
    assert r.status_code == 200, r.text
    assert synapse.membership(alice, room_id, bob.user_id) == "join"


def test_unbind_through_synapse(synapse, identity_server, smtp):
    """4. B removes the address through Synapse, which signs the unbind to us (X-Matrix)."""
    bob = synapse.register()
    address = guest_address("unbound")
    bob_token = our_token(synapse, identity_server, bob)
    sid = validate_with_us(identity_server, smtp, bob_token, address, "bind-secret-4")
    r = bind_through_synapse(synapse, identity_server, bob, bob_token, sid, "bind-secret-4")
    assert r.status_code == 200, r.text
    assert lookup(identity_server, address).get("mxid") == bob.user_id
    log_start = len(requests_seen(identity_server))

    r = synapse.request(
        "POST",
        f"{CLIENT}/account/3pid/unbind",
        bob,
        json={"medium": "email", "address": address, "id_server": identity_server.host},
    )
    unbind = answered(identity_server, log_start, "POST", f"{V2}/3pid/unbind")
    assert unbind == [200], requests_seen(identity_server)[log_start:]
    assert r.status_code == 200, r.text
    assert r.json()["id_server_unbind_result"] == "success", r.text
    assert lookup(identity_server, address) == {}


def test_delivery_waits_for_synapse_to_come_back(synapse, identity_server, smtp):
    """5. Synapse is down when B binds: the invitation arrives once it is back."""
    alice, bob = synapse.register(), synapse.register()
    address = guest_address("later")
    room_id = invite_by_email(synapse, identity_server, smtp, alice, address)
    bob_token = our_token(synapse, identity_server, bob)
    sid = validate_with_us(identity_server, smtp, bob_token, address, "bind-secret-5")

    synapse.stop()
    try:
        r = identity_server.post(
            f"{V2}/3pid/bind",
            json={"sid": sid, "client_secret": "bind-secret-5", "mxid": bob.user_id},
            headers=bearer(bob_token),
        )
        assert r.status_code == 200, r.text
        assert r.json()["mxid"] == bob.user_id
        # Let at least one delivery attempt fail against the stopped homeserver.
        (waiting,) = wait_until(
            lambda: identity_server.query(
                "SELECT delivery.attempts, delivery.delivered_at FROM delivery"
                " JOIN invitation ON invitation.id = delivery.invitation_id"
                " WHERE invitation.address = ? AND delivery.attempts > 0",
                address,
            ),
            timeout=15,
            what="a failed delivery attempt",
        )
        assert waiting[1] is None, waiting
    finally:
        synapse.start()
    wait_until(
        lambda: synapse.membership(alice, room_id, bob.user_id) == "invite",
        timeout=60,
        interval=0.5,
        what="the delayed invitation to reach the restarted Synapse",
    )
    # Synapse shows the invite while it answers our onbind call; the delivery is
    # recorded as done once that answer is in.
    wait_until(
        lambda: identity_server.query(
            "SELECT delivery.delivered_at FROM delivery"
            " JOIN invitation ON invitation.id = delivery.invitation_id"
            " WHERE invitation.address = ? AND delivery.delivered_at IS NOT NULL",
            address,
        ),
        timeout=10,
        what="the delivery to be recorded as done",
    )


def request_registration_token(synapse, address: str):
    return synapse.request(
        "POST",
        f"{CLIENT}/register/email/requestToken",
        json={"client_secret": "register-secret", "email": address, "send_attempt": 1},
    )


def test_registration_gated_by_routing(synapse, identity_server, smtp):
    """6. Synapse's is_3pid_allowed asks our /internal-info: invitation-only, routed."""
    guest = guest_address("newcomer")
    log_start = len(requests_seen(identity_server))
    r = request_registration_token(synapse, guest)
    assert r.status_code == 403, r.text
    assert r.json()["errcode"] == "M_THREEPID_DENIED"

    # An invitation stored with us (a homeserver's store-invite) opens the door.
    alice = synapse.register()
    token = our_token(synapse, identity_server, alice)
    room_id = synapse.create_room(alice)
    r = identity_server.post(
        f"{V2}/store-invite",
        json={"medium": "email", "address": guest, "room_id": room_id, "sender": alice.user_id},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    mails_to(smtp, guest)  # our invitation
    r = request_registration_token(synapse, guest)
    assert r.status_code == 200, r.text
    assert r.json()["sid"]
    mails_to(smtp, guest, 2)  # Synapse's own validation mail

    # An address that routes to another platform never registers here.
    agent = f"agent-{uuid.uuid4().hex[:8]}@dept.agent.example"
    r = request_registration_token(synapse, agent)
    assert r.status_code == 403, r.text
    assert r.json()["errcode"] == "M_THREEPID_DENIED"
    # The gate asked our internal API, with the shared secret, each time.
    wait_until(
        lambda: answered(identity_server, log_start, "GET", f"{V1}/internal-info", 0) == [200] * 3,
        timeout=5,
        what="three internal-info calls in our log",
    )


def sign_as_element(identity_server, sign_url: str, mxid: str):
    """What matrix-js-sdk's joinRoom does with `inviteSignUrl`: POST it, `mxid` added."""
    return identity_server.post(relative(sign_url) + "&" + urlencode({"mxid": mxid}))


def test_a_guest_joins_from_the_landing_page_and_the_link_admits_no_one_else(
    synapse, identity_server, smtp
):
    """7. The guest follows the landing page's button: its client gets our signature and
    joins with `third_party_signed`; a second account using the same link is refused
    by us and does not get into the room, not even with the guest's signature."""
    alice, guest, other = synapse.register(), synapse.register(), synapse.register()
    address = guest_address("landing")
    room_id = invite_by_email(synapse, identity_server, smtp, alice, address)
    (mail,) = mails_to(smtp, address)
    page = identity_server.get(relative(landing_link_from_mail(mail)))
    assert page.status_code == 200, page.text
    link = query_of(web_client_link_from_page(page.text).replace("#/room/", ""))
    sign_url = unquote(link["signurl"])

    signed = sign_as_element(identity_server, sign_url, guest.user_id)
    assert signed.status_code == 200, signed.text
    r = synapse.request(
        "POST",
        f"{CLIENT}/rooms/{quote(room_id)}/join",
        guest,
        json={"third_party_signed": signed.json()},
    )
    assert r.status_code == 200, r.text
    assert synapse.membership(alice, room_id, guest.user_id) == "join"
    # A client retrying for the same account still gets its signature.
    again = sign_as_element(identity_server, sign_url, guest.user_id)
    assert again.status_code == 200, again.text

    refused = sign_as_element(identity_server, sign_url, other.user_id)
    assert refused.status_code == 403, refused.text
    assert refused.json()["errcode"] == "M_FORBIDDEN"
    join = f"{CLIENT}/rooms/{quote(room_id)}/join"
    r = synapse.request("POST", join, other, json={})
    assert r.status_code == 403, r.text
    r = synapse.request("POST", join, other, json={"third_party_signed": signed.json()})
    assert r.status_code == 403, r.text
    assert synapse.membership(alice, room_id, other.user_id) is None
    # The landing page now says the invitation was accepted, on Synapse's server.
    page = identity_server.get(relative(landing_link_from_mail(mail)))
    assert page.status_code == 409
    assert synapse.server_name in page.text and guest.user_id not in page.text


def test_inviting_again_after_expiry_mails_a_fresh_link_that_works(synapse, identity_server, smtp):
    """8. An email invitation expires; the inviter invites the address again through
    Synapse. A fresh mail arrives whose link works; the guest binds the address and
    Synapse, told by our onbind, invites them with the new invitation and they join.
    The old link keeps saying the old invitation expired."""
    alice, guest = synapse.register(), synapse.register()
    address = guest_address("again")
    room_id = invite_by_email(synapse, identity_server, smtp, alice, address)
    (old_mail,) = mails_to(smtp, address)
    [(old_token,)] = identity_server.query(
        "SELECT token FROM invitation WHERE address = ?", address
    )
    # It expires (its expiry moved back to its creation: in the past).
    identity_server.query(
        "UPDATE invitation SET expires_at = created_at WHERE address = ?", address
    )
    old_page = identity_server.get(relative(landing_link_from_mail(old_mail)))
    assert old_page.status_code == 410 and "Cette invitation a expiré" in old_page.text

    token = our_token(synapse, identity_server, alice)
    r = synapse.invite_email(alice, room_id, address, identity_server.host, token)
    assert r.status_code == 200, r.text
    new_mail = mails_to(smtp, address, 2)[-1]
    [(new_token,)] = identity_server.query(
        "SELECT token FROM invitation WHERE address = ? AND token <> ?", address, old_token
    )
    assert "Votre précédente invitation à ce salon n'est plus valable" in new_mail.text()
    new_link = landing_link_from_mail(new_mail)
    assert new_link != landing_link_from_mail(old_mail)
    page = identity_server.get(relative(new_link))
    assert page.status_code == 200, page.text
    # The room holds both third-party invitations; only the new one is live.
    state = synapse.room_state(alice, room_id)
    tokens = {e["state_key"] for e in state if e["type"] == "m.room.third_party_invite"}
    assert tokens == {old_token, new_token}

    # The guest validates the address with us and binds it through Synapse.
    guest_token = our_token(synapse, identity_server, guest)
    sid = validate_with_us(identity_server, smtp, guest_token, address, "again-secret-8")
    r = bind_through_synapse(synapse, identity_server, guest, guest_token, sid, "again-secret-8")
    assert r.status_code == 200, r.text
    wait_until(
        lambda: synapse.membership(alice, room_id, guest.user_id) == "invite",
        timeout=30,
        what="Synapse to invite the guest after our onbind",
    )
    member = synapse.member_event(alice, room_id, guest.user_id)
    assert member["third_party_invite"]["signed"]["token"] == new_token
    r = synapse.request("POST", f"{CLIENT}/rooms/{quote(room_id)}/join", guest, json={})
    assert r.status_code == 200, r.text
    assert synapse.membership(alice, room_id, guest.user_id) == "join"
    # The old link still says expired; the new one, accepted on Synapse's server.
    old_page = identity_server.get(relative(landing_link_from_mail(old_mail)))
    assert old_page.status_code == 410 and "Cette invitation a expiré" in old_page.text
    page = identity_server.get(relative(new_link))
    assert page.status_code == 409 and synapse.server_name in page.text


def test_a_guest_who_refused_is_not_invited_again_through_synapse(synapse, identity_server, smtp):
    """9. The guest refuses with the mail's one-click POST (RFC 8058); the inviter invites
    the address again through Synapse. We answer Synapse's store-invite 403 M_FORBIDDEN
    with our text, and nothing reaches the room or the guest's mailbox. Stock Synapse
    does not relay an identity server's error: the inviter gets its own 500 (see
    docs/guests.md)."""
    alice = synapse.register()
    address = guest_address("refuses")
    room_id = invite_by_email(synapse, identity_server, smtp, alice, address)
    (mail,) = mails_to(smtp, address)
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.fullmatch(r"<(https://[^>]+)>", str(mail.message["List-Unsubscribe"])).group(1)
    assert url.startswith(identity_server.base + "/")
    r = identity_server.post(
        relative(url),
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text

    log_start = len(requests_seen(identity_server))
    token = our_token(synapse, identity_server, alice)
    r = synapse.invite_email(alice, room_id, address, identity_server.host, token)
    assert answered(identity_server, log_start, "POST", f"{V2}/store-invite") == [403]
    assert r.status_code == 500, r.text  # Synapse's own "Internal server error"
    state = synapse.room_state(alice, room_id)
    assert len([e for e in state if e["type"] == "m.room.third_party_invite"]) == 1
    time.sleep(1)
    assert len(smtp.to(address)) == 1
