"""Third-party invitations: stored for a homeserver, mailed, handed over on bind."""

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from email.header import Header
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode

import signedjson.key
from nacl.signing import SigningKey

from identity import keys
from identity.accounts import server_of
from identity.addresses import normalise_email
from identity.clock import new_token
from identity.errors import InvalidParam
from identity.errors import ThreepidInUse
from identity.errors import Unrecognized
from identity.storage import associations
from identity.storage import deliveries
from identity.storage import ephemeral_keys
from identity.storage import invites
from identity.storage.models import Delivery
from identity.storage.models import Invitation

# The optional string arguments of store-invite that the mail may show.
OPTIONAL_FIELDS = (
    "room_alias",
    "room_avatar_url",
    "room_join_rules",
    "room_name",
    "room_type",
    "sender_display_name",
    "sender_avatar_url",
)

# Sends the invitation mail: (invitation, template variables) → None; raises on failure.
InviteSender = Callable[[Invitation, dict[str, str]], None]


@dataclass(frozen=True)
class Policy:
    validity: timedelta
    base_url: str
    web_client_location: str
    reveal_local: int = 3
    reveal_domain: int = 3


class Unsupported(Unrecognized):
    status = 400


def store_invite(
    medium: str,
    address: str,
    room_id: str,
    sender: str,
    details: dict[str, str],
    *,
    sender_verified: bool,
    now: datetime,
    policy: Policy,
    long_term_key: SigningKey,
    send: InviteSender,
) -> dict[str, Any]:
    """Store an invitation, mail it, and return what the homeserver puts in the room.

    :param details: every other string argument of the request (room_name, …).
    :raises MatrixError: M_UNRECOGNIZED for a medium other than email, M_INVALID_EMAIL,
        M_THREEPID_IN_USE (with the bound mxid), M_EMAIL_SEND_ERROR.
    """
    if medium != "email":
        raise Unsupported(f"Unsupported medium {medium!r}: only email is supported")
    address = normalise_email(address)
    bound = associations.find(medium, address)
    if bound is not None:
        raise ThreepidInUse("This address is already bound to a Matrix ID", mxid=bound.mxid)
    invitation = invites.add(
        Invitation(
            token=new_token(32),
            medium=medium,
            address=address,
            room_id=room_id,
            sender=sender,
            sender_verified=sender_verified,
            details=details,
            created_at=now,
            expires_at=now + policy.validity,
        )
    )
    ephemeral = SigningKey.generate()
    ephemeral_public = _unpadded_urlsafe(ephemeral.verify_key.encode())
    ephemeral_keys.add(ephemeral_public, invitation.id, now)
    send(invitation, mail_context(invitation, _unpadded_urlsafe(ephemeral.encode()), policy))
    long_term = keys.public_key_base64(long_term_key)
    validity_base = f"{policy.base_url}/_matrix/identity/api/v1"
    return {
        "token": invitation.token,
        "public_key": long_term,
        "public_keys": [
            {"public_key": long_term, "key_validity_url": f"{validity_base}/pubkey/isvalid"},
            {
                "public_key": ephemeral_public,
                "key_validity_url": f"{validity_base}/pubkey/ephemeral/isvalid",
            },
        ],
        "display_name": redact_for_display(address, policy.reveal_local, policy.reveal_domain),
    }


def mail_context(invitation: Invitation, ephemeral_private_key: str, policy: Policy) -> dict:
    """The invitation mail's variables, under the names Sydent templates use."""
    details = {field: "" for field in OPTIONAL_FIELDS} | dict(invitation.details)
    web_client = details.pop("org.matrix.web_client_location", "") or policy.web_client_location
    room_name = _shorten(details["room_name"], 30)
    verified = invitation.sender_verified
    sender_name = _shorten(details["sender_display_name"], 20)
    context = {
        **details,
        "medium": invitation.medium,
        "address": invitation.address,
        "room_id": invitation.room_id,
        "sender": invitation.sender,
        "token": invitation.token,
        "ephemeral_private_key": ephemeral_private_key,
        "web_client_location": web_client,
        "room_name": room_name,
        "sender_display_name": sender_name,
        "bracketed_room_name": f"({room_name}) " if room_name else "",
        "bracketed_verified_sender": f"({invitation.sender}) " if verified else "",
        "sender_verified": "yes" if verified else "",
        "expires_at": invitation.expires_at.strftime("%d/%m/%Y"),
    }
    context["sign_url"] = f"{policy.base_url}/_matrix/identity/api/v1/sign-ed25519?" + urlencode(
        {"token": invitation.token, "private_key": ephemeral_private_key}
    )
    context["invite_link"] = web_client_link(context)
    subject = f"{sender_name or invitation.sender} vous invite sur Tchap / invites you to Tchap"
    context["subject_header_value"] = Header(subject, "utf-8").encode()
    return context


def web_client_link(context: dict[str, str]) -> str:
    """The web client's room link with the parameters it expects for 3PID invitations."""
    query = urlencode(
        {
            "email": context["address"],
            "signurl": context["sign_url"],
            "room_name": context["room_name"],
            "room_avatar_url": context["room_avatar_url"],
            "inviter_name": context["sender_display_name"],
            "room_type": context["room_type"],
        }
    )
    return f"{context['web_client_location']}/#/room/{quote(context['room_id'])}?{query}"


def hand_over_pending(medium: str, address: str, mxid: str, *, now: datetime) -> list[Invitation]:
    """Queue the address's live invitations for delivery to `mxid`'s homeserver.

    Each invitation is accepted once: the delivery queue holds one job per invitation.
    """
    pending = invites.live_for(medium, address, now=now)
    for invitation in pending:
        invitation.accepted_at = now
        deliveries.add(
            Delivery(
                invitation_id=invitation.id,
                destination=server_of(mxid) or "",
                mxid=mxid,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    return pending


def has_live_invitation(medium: str, address: str, *, now: datetime) -> bool:
    return bool(invites.live_for(medium, address, now=now))


def sign_with_ephemeral_key(
    token: str, mxid: str, private_key: str, *, server_name: str
) -> dict[str, Any]:
    """Sign {mxid, sender, token} with an invitation's ephemeral key (sign-ed25519).

    :raises MatrixError: M_UNRECOGNIZED for an unknown token, M_INVALID_PARAM for a
        malformed key.
    """
    invitation = invites.by_token(token)
    if invitation is None:
        raise Unrecognized("Unknown invitation token")
    try:
        key = signedjson.key.decode_signing_key_base64("ed25519", "0", private_key)
    except Exception:
        raise InvalidParam("private_key is not a valid ed25519 key") from None
    payload = {"mxid": mxid, "sender": invitation.sender, "token": token}
    return keys.sign(payload, server_name, key)


def redact_for_display(address: str, reveal_local: int, reveal_domain: int) -> str:
    """``marie.dupont@ac-versailles.fr`` → ``mar…@ac-…``: enough to recognise, not to harvest."""
    local, _, domain = address.partition("@")
    return f"{_redact(local, reveal_local)}@{_redact(domain, reveal_domain)}"


def _redact(text: str, reveal: int) -> str:
    if len(text) > reveal:
        return text[:reveal] + "…"
    return text[:1] + "…" if len(text) > 1 else "…"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _unpadded_urlsafe(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
