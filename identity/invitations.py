"""Third-party invitations: stored for a homeserver, mailed, handed over on bind.

A homeserver that cannot find a Matrix ID for an email address stores an invitation
here (store-invite). We mail the guest a link to the web client, and when the address
is later bound to a Matrix ID, the invitation is queued for delivery to that user's
homeserver (`identity.deliveries`).
"""

import base64
import logging
import secrets
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from typing import Any
from typing import Protocol
from urllib.parse import urlsplit

import nacl.signing
import signedjson.key
from nacl.exceptions import CryptoError
from signedjson.types import SigningKey

from identity import abuse
from identity import keys
from identity import landing
from identity import metrics
from identity import refusals
from identity.abuse import Blocklists
from identity.abuse import Quotas
from identity.addresses import parse_email
from identity.addresses import redact
from identity.clock import new_token
from identity.config import Settings
from identity.errors import CallerNotAllowed
from identity.errors import Forbidden
from identity.errors import InvalidParam
from identity.errors import ThreepidInUse
from identity.errors import Unrecognized
from identity.matrix_ids import server_of
from identity.routing import RoutingTable
from identity.storage import associations
from identity.storage import deliveries
from identity.storage import ephemeral_keys
from identity.storage import invites
from identity.storage.models import Delivery
from identity.storage.models import Invitation

logger = logging.getLogger(__name__)

# The store-invite argument naming the web client (the policy decides whether to use it).
WEB_CLIENT_LOCATION_ARG = "org.matrix.web_client_location"

# The arguments of store-invite that are not kept in Invitation.details.
REQUIRED_FIELDS = ("medium", "address", "room_id", "sender")
# The longest Matrix identifier (appendices, "Common Identifier Format").
MAX_ROOM_ID_BYTES = 255


@dataclass(frozen=True)
class InvitationMail:
    """What the invitation mail tells its guest; `identity.presentation` words it."""

    invitation: Invitation
    # Exists only in the mail (and its landing link): we never sign with it ourselves.
    ephemeral_private_key: str
    web_client_location: str
    guest: bool  # the address's platform takes only invited people
    already_invited: bool
    # An earlier invitation to the same room expired or was revoked unaccepted: this one
    # replaces it (its link, not the old one, opens the room).
    renewed: bool = False
    # Which mail: "invite" (stored just now) or "reminder" (identity.reminders); each
    # is a template of its own, built and sent the same way.
    kind: str = "invite"


# Mails an invitation: (mailbox, what to tell, brand=…) → None; raises on failure.
class InviteSender(Protocol):
    def __call__(self, to: str, mail: InvitationMail, *, brand: str | None) -> None: ...


@dataclass(frozen=True)
class Policy:
    """What the deployment decides about invitations (from Settings)."""

    validity: timedelta
    base_url: str
    web_client_location: str
    # Signs the landing page links (identity.landing.secret_from).
    landing_secret: str
    # Characters of the address shown in the room's display name (Sydent's defaults).
    reveal_local: int = 3
    reveal_domain: int = 3
    quotas: Quotas = Quotas(per_address=None, per_sender=None)
    blocklists: Blocklists = Blocklists()
    # Hosts whose web client a request's org.matrix.web_client_location may name.
    web_client_hosts: tuple[str, ...] = ()
    # The service's long-term public key, which store-invite returns.
    long_term_public_key: str = ""
    refuse_special_use_domains: bool = False
    # How long before its expiry a pending invitation's one reminder is due; zero: none.
    reminder_lead: timedelta = timedelta(0)
    # The guest's refusal and report links and the hashes kept (identity.refusals).
    guest_keys: refusals.GuestKeys = field(
        default_factory=lambda: refusals.GuestKeys.from_secret(secrets.token_hex(32))
    )
    # How long after the invitation's expiry its refusal link still works.
    guest_link_lifetime: timedelta = timedelta(days=30)
    reports: refusals.ReportRule = refusals.ReportRule(threshold=None, window=timedelta(days=30))

    @classmethod
    def from_settings(cls, config: Settings, signing_key: SigningKey) -> "Policy":
        landing_secret = landing.secret_from(config.secret_key, signing_key)
        return cls(
            validity=timedelta(seconds=config.invite_validity_seconds),
            base_url=config.public_base_url,
            web_client_location=config.web_client_location,
            web_client_hosts=config.web_client_location_allowlist,
            landing_secret=landing_secret,
            long_term_public_key=keys.public_key_base64(signing_key),
            reveal_local=config.invite_reveal_local,
            reveal_domain=config.invite_reveal_domain,
            quotas=Quotas(
                per_address=config.invite_max_per_address_per_day,
                per_sender=config.invite_max_per_sender_per_day,
            ),
            blocklists=Blocklists(
                keywords=config.invite_blocked_keywords,
                homeservers=config.invite_blocked_homeservers,
                rooms=config.invite_blocked_rooms,
            ),
            refuse_special_use_domains=config.refuse_special_use_domains,
            reminder_lead=config.invite_reminder_before_expiry,
            guest_keys=refusals.GuestKeys.from_secret(
                landing_secret, config.guest_previous_secrets
            ),
            guest_link_lifetime=timedelta(days=config.invite_retention_days),
            reports=refusals.ReportRule(
                threshold=config.invite_reports_block_threshold or None,
                window=timedelta(days=config.invite_reports_window_days),
            ),
        )


def store_invite(
    medium: str,
    address: str,
    room_id: str,
    sender: str,
    details: dict[str, str],
    *,
    caller: str | None,
    now: datetime,
    policy: Policy,
    routing: RoutingTable,
    brand: str | None = None,
    send: InviteSender,
) -> dict[str, Any]:
    """Store an invitation, mail it, and return what the homeserver puts in the room.

    The invitation is flushed, not committed: when the mail cannot be sent the caller
    commits nothing, so no invitation exists that its guest never heard of.

    :param details: every other string argument of the request (room_name, …).
    :param caller: the authenticated user (v2), who may only invite as themselves; None
        on the v1 path (the sender is then not verified).
    :param send: words and mails the invitation (`presentation.send_invitation`).
    :param routing: tells the mail whether the guest will get an account on an
        invitation-only platform or signs in as an agent of a known administration.
    :raises MatrixError: 403 M_FORBIDDEN when `caller` is not `sender`, M_UNRECOGNIZED
        for a medium other than email, M_INVALID_EMAIL,
        M_INVALID_PARAM for a room ID over 255 bytes or a malformed sender, M_FORBIDDEN
        for a blocklisted invitation, a sender blocked by reports or an address whose
        guest refused invitations (from this sender or at all), M_THREEPID_IN_USE
        (with the bound mxid),
        M_LIMIT_EXCEEDED (with retry_after_ms), M_EMAIL_SEND_ERROR.
    """
    if caller is not None and caller != sender:
        raise CallerNotAllowed("The sender must be the authenticated user")
    if medium != "email":
        raise Unrecognized(f"Didn't understand medium {medium!r}", status=400)
    written = parse_email(address, refuse_special_use=policy.refuse_special_use_domains)
    address = written.key
    # Opaque to us, as to Sydent: room ID formats change with room versions.
    if len(room_id.encode()) > MAX_ROOM_ID_BYTES:
        raise InvalidParam(f"room_id is longer than {MAX_ROOM_ID_BYTES} bytes")
    if server_of(sender) is None:
        raise InvalidParam("sender is not a Matrix user ID")
    abuse.check_blocklists(
        policy.blocklists, room_id=room_id, sender=sender, texts=[sender, *details.values()]
    )
    refusals.check_sender(sender, rule=policy.reports, now=now)
    bound = associations.find(medium, address)
    if bound is not None:
        raise ThreepidInUse("Binding already known", mxid=bound.mxid)
    # The guest's own say (identity.refusals): nothing is stored, nothing is mailed.
    refusals.check_refusals(address, sender, keys=policy.guest_keys)
    abuse.check_quotas(policy.quotas, medium=medium, address=address, sender=sender, now=now)
    already_invited = invites.has_live(medium, address, now=now)
    renewed = invites.has_lapsed(medium, address, room_id, now=now)
    ephemeral = nacl.signing.SigningKey.generate()
    ephemeral_private = encode_key(ephemeral.encode())
    expires_at = now + policy.validity
    invitation = invites.add(
        Invitation(
            token=new_token(32),
            medium=medium,
            address=address,
            mailbox=written.mailbox,
            room_id=room_id,
            sender=sender,
            sender_verified=caller is not None,
            details=details,
            created_at=now,
            expires_at=expires_at,
            reminder_key=(
                landing.seal_key(ephemeral_private, policy.landing_secret)
                if wants_reminder(now, expires_at, policy.reminder_lead)
                else None
            ),
        )
    )
    ephemeral_public = encode_key(ephemeral.verify_key.encode())
    ephemeral_keys.add(ephemeral_public, invitation.id, now)
    mail = InvitationMail(
        invitation,
        ephemeral_private_key=ephemeral_private,
        web_client_location=web_client_location_of(invitation, policy),
        guest=routing.resolve(address).platform.requires_invite,
        already_invited=already_invited,
        renewed=renewed,
    )
    # To the mailbox as written: case-folding may change it (Straße → strasse).
    send(written.mailbox, mail, brand=brand)
    metrics.INVITATIONS_STORED.inc()
    return store_invite_response(invitation, ephemeral_public, policy)


def wants_reminder(created_at: datetime, expires_at: datetime, lead: timedelta) -> bool:
    """Whether an invitation gets a reminder `lead` before its expiry: only when reminders
    are on and it was made longer than `lead` before its expiry (one due the moment it is
    mailed would repeat the invitation; at equal lead and validity, it would too)."""
    return lead > timedelta(0) and expires_at - lead > created_at


def store_invite_response(
    invitation: Invitation, ephemeral_public: str, policy: Policy
) -> dict[str, Any]:
    long_term = policy.long_term_public_key
    # The v1 paths, as Sydent gives them: rooms keep these URLs for as long as they live.
    validity_base = f"{policy.base_url}/_matrix/identity/api/v1"
    return {
        "token": invitation.token,
        "public_keys": [
            {"public_key": long_term, "key_validity_url": f"{validity_base}/pubkey/isvalid"},
            {
                "public_key": ephemeral_public,
                "key_validity_url": f"{validity_base}/pubkey/ephemeral/isvalid",
            },
        ],
        # Older homeservers read only this deprecated field.
        "public_key": long_term,
        "display_name": redact_for_display(
            invitation.address, policy.reveal_local, policy.reveal_domain
        ),
    }


def web_client_location_of(invitation: Invitation, policy: Policy) -> str:
    """The web client the invitation's links open (see `web_client_location`)."""
    return web_client_location(invitation.details.get(WEB_CLIENT_LOCATION_ARG, ""), policy)


def web_client_location(requested: str, policy: Policy) -> str:
    """The web client the link opens: the configured one, unless the request names an
    https URL on a host of WEB_CLIENT_LOCATION_ALLOWLIST.

    The link goes out under our name, from our landing page, and carries the guest's
    address and the invitation's private key: anyone may call v1 store-invite, so a
    host of the caller's choosing is never trusted.
    """
    try:
        parts = urlsplit(requested.strip())
    except ValueError:  # "https://[::1": not a URL at all
        return policy.web_client_location
    if (
        parts.scheme == "https"
        and parts.hostname in policy.web_client_hosts
        and not parts.username
        and not parts.query
        and not parts.fragment
    ):
        return requested.strip().rstrip("/")
    return policy.web_client_location


def hand_over_pending(medium: str, address: str, mxid: str, *, now: datetime) -> list[Invitation]:
    """Queue the address's live invitations for delivery to `mxid`'s homeserver.

    Called by a bind, in its transaction. Each invitation gets at most one delivery
    job, to the one account it admits: an invitation that admitted another account
    (its link was used by someone else) is not delivered; expired, revoked and already
    handed over ones are left out.

    :param mxid: a valid Matrix user ID (the bind has checked it).
    :returns: the invitations handed over.
    """
    handed = []
    for invitation in invites.deliverable_to(medium, address, mxid, now=now):
        if not invites.hand_over(invitation.id, mxid, now=now):
            continue  # another account or another bind took it meanwhile
        handed.append(invitation)
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
    refused = invites.admitting_others(medium, address, mxid, now=now)
    if refused:
        logger.info(
            "Bind of %s on %s: %s invitation(s) admitted another account, not delivered",
            redact(address), server_of(mxid), refused,
        )  # fmt: skip
    return handed


def sign_with_ephemeral_key(
    token: str,
    mxid: str,
    private_key: str,
    *,
    server_name: str,
    now: datetime,
    single_use: bool = True,
) -> dict[str, Any]:
    """Sign {mxid, sender, token} with an invitation's ephemeral key (sign-ed25519).

    Clients that cannot do the cryptography themselves send us the private key from
    the mail link; the result is the `third_party_signed` object they join with.
    The first signature admits `mxid` (flushed, not committed): afterwards only that
    account gets one, so that a forwarded link lets nobody else in.

    :param single_use: off, anyone holding the link gets a signature and nothing is
        recorded (Sydent's behaviour).
    :raises MatrixError: 404 M_UNRECOGNIZED for an unknown token; 403 M_FORBIDDEN for
        an expired or revoked invitation, or one that admitted another account;
        M_INVALID_PARAM for a malformed mxid or key, or a key that is not the
        invitation's.
    """
    invitation = invites.by_token(token)
    if invitation is None:
        raise Unrecognized("Didn't recognize token")
    # 403 rather than 404: Element shows the `error` of a 403 as it is, while for a
    # 404 it explains instead how to join a room by its ID.
    if invitation.revoked_at is not None:
        raise Forbidden("This invitation was revoked")
    if invitation.expires_at <= now:
        raise Forbidden("This invitation has expired")
    if server_of(mxid) is None:
        raise InvalidParam("mxid is not a Matrix user ID")
    try:
        key = signedjson.key.decode_signing_key_base64("ed25519", "0", private_key)
    except (ValueError, CryptoError):  # bad base64 (binascii.Error), a wrong-size seed
        raise InvalidParam("private_key is not a valid ed25519 key") from None
    issued = ephemeral_keys.public_keys_of(invitation.id)
    if issued and encode_key(key.verify_key.encode()) not in issued:
        raise InvalidParam("private_key is not this invitation's key")
    if single_use:
        admitted = invites.admit(invitation.id, mxid, now=now)
        if admitted != mxid:
            logger.info(
                "Invitation %s refused to an account on %s: it admitted one on %s",
                invitation.id, server_of(mxid), server_of(admitted or ""),
            )  # fmt: skip
            raise Forbidden(
                "This invitation was already accepted by another account:"
                " ask the inviter for a new invitation"
            )
    payload = {"mxid": mxid, "sender": invitation.sender, "token": token}
    return keys.sign(payload, server_name, key)


def redact_for_display(address: str, reveal_local: int, reveal_domain: int) -> str:
    """``marie.dupont@ac-versailles.fr`` → ``mar…@ac-…``: enough to recognise, not to harvest.

    The room's members see this name until the guest joins. A part no longer than
    what would be revealed is still cut to half, so that no address is shown whole.
    """
    local, _, domain = address.rpartition("@")
    return f"{_redact(local, reveal_local)}@{_redact(domain, reveal_domain)}"


def _redact(text: str, reveal: int) -> str:
    shown = reveal if len(text) > reveal else len(text) // 2
    return text[:shown] + "…"


def encode_key(data: bytes) -> str:
    """URL-safe unpadded base64, as Sydent encodes ephemeral keys (it survives links)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def check_ephemeral_key(public_key: str, *, now: datetime) -> bool:
    """Whether we issued the ephemeral key and its invitation is still open.

    Each check is counted: homeservers ask when a guest joins with the key. A key
    whose invitation was revoked or has expired is no longer valid; a key linked to
    no invitation (imported from Sydent, which keeps no link) stays valid.
    """
    found = ephemeral_keys.find_with_invitation(public_key)
    if found is None:
        return False
    key, invitation = found
    key.verify_count += 1
    if invitation is None:
        return key.invitation_id is None
    return invitation.is_open(now)
