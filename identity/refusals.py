"""The guest's own say: refusing invitations, and reporting a sender one does not know.

Every invitation mail names a refusal link (RFC 8058 one-click, `List-Unsubscribe`)
whose token, like the landing page's, is opaque: the invitation's id and creation time,
encrypted and authenticated with NaCl's SecretBox under a key derived from the
landing secret (SECRET_KEY, else derived from the signing key). A forged, altered or
expired token opens nothing. The link works for as long as the invitation is kept:
its validity, then INVITE_RETENTION_DAYS after its expiry.

What is kept is never the address: an HMAC-SHA256 of its key (identity.addresses,
so ``Straße@`` and ``STRASSE@`` are one person) under a key derived from the same
secret, the scope, the inviting account for the "not from this person" scope, and
the time (docs/privacy.md). Changing the secret forgets every refusal and report
unless the previous secret is kept in GUEST_PREVIOUS_SECRETS.
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from identity import metrics
from identity import validation
from identity.clock import new_token
from identity.errors import Forbidden
from identity.storage import invites
from identity.storage import refusals
from identity.storage.models import Invitation
from identity.storage.models import ValidationSession

logger = logging.getLogger(__name__)

# Where the guest's pages live (identity/pages.py serves them).
REFUSE_PATH = "/_matrix/identity/guest/refuse"
REPORT_PATH = "/_matrix/identity/guest/report"
# "not from this person" (the inviting account) and "no invitations from this platform".
SENDER = refusals.SENDER
ALL = refusals.ALL
SCOPES = (SENDER, ALL)
# A token longer than this is not one of ours: refused before any decoding.
MAX_TOKEN_LENGTH = 256

# What the inviter's client shows as it is (store-invite's 403 M_FORBIDDEN).
REFUSED_FROM_SENDER = "This person has asked not to receive invitations from you"
REFUSED_FROM_PLATFORM = "This person has asked not to receive invitations"
SENDER_BLOCKED = (
    "Your invitations are suspended: several people you invited reported that they do"
    " not know you. Contact the platform's administrators."
)


@dataclass(frozen=True)
class GuestKeys:
    """The keys of the guest's links and of the kept hashes, each derived from a secret."""

    link: bytes  # encrypts the refusal links' tokens
    hashes: tuple[bytes, ...]  # the address hash's key; then those of previous secrets

    @classmethod
    def from_secret(cls, secret: str, previous: tuple[str, ...] = ()) -> "GuestKeys":
        return cls(
            link=_derive(secret, b"guest link encryption"),
            hashes=tuple(_derive(s, b"guest address hash") for s in (secret, *previous)),
        )


def _derive(secret: str, purpose: bytes) -> bytes:
    # A key per purpose, so that the secret itself never encrypts nor hashes anything.
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


@dataclass(frozen=True)
class ReportRule:
    """When reports block a sender (INVITE_REPORTS_*)."""

    threshold: int | None  # distinct reporters that block; None: reports never block
    window: timedelta


def address_hash(address: str, key: bytes) -> str:
    """The keyed hash kept instead of the address `address` (its key form)."""
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


def address_hashes(address: str, keys: GuestKeys) -> list[str]:
    """The address's hash under the current secret, then under each previous one."""
    return [address_hash(address, key) for key in keys.hashes]


def link_token(invitation: Invitation, keys: GuestKeys) -> str:
    """The opaque token of the invitation's refusal and report links."""
    payload = [invitation.id, int(invitation.created_at.timestamp())]
    sealed = SecretBox(keys.link).encrypt(json.dumps(payload, separators=(",", ":")).encode())
    return base64.urlsafe_b64encode(bytes(sealed)).rstrip(b"=").decode()


def open_link(
    token: str, *, keys: GuestKeys, link_lifetime: timedelta, now: datetime
) -> Invitation | None:
    """The invitation a refusal or report token names; None for a forged, altered or
    expired token (past the invitation's expiry plus `link_lifetime`), or one whose
    invitation is gone."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        invitation_id, created = json.loads(SecretBox(keys.link).decrypt(sealed))
    except (binascii.Error, CryptoError, ValueError, TypeError):
        return None
    if not isinstance(invitation_id, int) or not isinstance(created, int):
        return None
    invitation = invites.by_id(invitation_id)
    # The creation time tells a purged invitation's id, given again, from its own.
    if invitation is None or int(invitation.created_at.timestamp()) != created:
        return None
    if invitation.expires_at + link_lifetime <= now:
        return None
    return invitation


def refuse(invitation: Invitation, scope: str, *, keys: GuestKeys, now: datetime) -> bool:
    """Record the guest's refusal of invitations from the invitation's sender (`SENDER`)
    or from the platform (`ALL`), and revoke the open invitations it covers.

    Idempotent: whether this call recorded the refusal (False when it was already).
    """
    sender = invitation.sender if scope == SENDER else ""
    recorded = refusals.add_refusal(
        address_hashes(invitation.address, keys)[0], scope, sender, now=now
    )
    revoked = refusals.revoke_refused(
        invitation.medium,
        invitation.address,
        sender=invitation.sender if scope == SENDER else None,
        now=now,
    )
    if recorded:
        metrics.GUEST_CHOICES.labels(f"refused_{scope}").inc()
        logger.info(
            "Invitation %s: its guest refused invitations (%s); %s open invitation(s) revoked",
            invitation.id, scope, revoked,
        )  # fmt: skip
    return recorded


def refusal_of(invitation: Invitation, keys: GuestKeys) -> str | None:
    """The scope of the guest's refusal that covers this invitation's sender, if any."""
    return refusals.refusal_scope(address_hashes(invitation.address, keys), invitation.sender)


def check_refusals(address: str, sender: str, *, keys: GuestKeys) -> None:
    """Refuse an invitation its guest asked not to receive.

    :param address: the address's key.
    :raises MatrixError: 403 M_FORBIDDEN, with a text the inviter's client shows as it is.
    """
    scope = refusals.refusal_scope(address_hashes(address, keys), sender)
    if scope is None:
        return
    metrics.INVITATIONS_REFUSED.labels(f"guest_refused_{scope}").inc()
    raise Forbidden(REFUSED_FROM_PLATFORM if scope == ALL else REFUSED_FROM_SENDER)


def lift_proven(invitation: Invitation, session: ValidationSession, *, keys: GuestKeys) -> int:
    """Lift the refusals covering the invitation's sender, once its guest proved the
    address (`session`, validated with the code mailed to it); how many were lifted.

    :raises MatrixError: 403 M_FORBIDDEN when the session proved another address.
    """
    if session.validated_at is None or session.address != invitation.address:
        raise Forbidden("This session did not prove the invitation's address")
    lifted = refusals.lift_covering(address_hashes(invitation.address, keys), invitation.sender)
    if lifted:
        metrics.GUEST_CHOICES.labels("lifted_by_guest").inc()
        logger.info("Invitation %s: its guest lifted %s refusal(s)", invitation.id, lifted)
    return lifted


def request_lift_code(
    invitation: Invitation,
    *,
    keys: GuestKeys,
    now: datetime,
    policy: validation.Policy,
    send: validation.CodeSender,
) -> ValidationSession | None:
    """Mail a validation code to the invitation's address, so that its guest may lift
    a refusal (`lift_with_code`); None, and no mail, when nothing is refused.

    The address comes from the invitation, never from the request: only the mailbox's
    owner reads the code.

    :raises MatrixError: M_EMAIL_SEND_ERROR, M_LIMIT_EXCEEDED (mails per address).
    """
    if refusal_of(invitation, keys) is None:
        return None
    return validation.request_code(
        invitation.mailbox or invitation.address,
        new_token(32),
        1,
        None,
        brand=None,
        now=now,
        policy=policy,
        send=send,
    )


def lift_with_code(
    invitation: Invitation,
    sid: str,
    client_secret: str,
    code: str,
    *,
    keys: GuestKeys,
    now: datetime,
    policy: validation.Policy,
) -> int:
    """Lift the refusals covering the invitation once its guest typed the code mailed
    by `request_lift_code`; how many were lifted.

    :raises MatrixError: M_NO_VALID_SESSION, M_SESSION_EXPIRED, M_TOKEN_INCORRECT
        (the wrong code is counted: flushed, the caller commits it), M_FORBIDDEN.
    """
    session = validation.submit_token(sid, client_secret, code, now=now, policy=policy)
    return lift_proven(invitation, session, keys=keys)


def lift(address: str, *, keys: GuestKeys, scope: str | None, sender: str | None) -> int:
    """An administrator lifts the address's refusals (of one scope or sender); how many.

    The audit line names the scope and the sender, never the address.
    """
    lifted = refusals.remove_refusals(address_hashes(address, keys), scope=scope, sender=sender)
    logger.warning(
        "Audit: an administrator lifted %s refusal(s) of invitations (scope %s, sender %s)",
        lifted, scope or "any", sender or "any",
    )  # fmt: skip
    return lifted


# -- reports ------------------------------------------------------------------


def report(invitation: Invitation, *, keys: GuestKeys, rule: ReportRule, now: datetime) -> bool:
    """Record "I don't know this person" against the invitation's sender, once per
    reporting address; block the sender when `rule.threshold` distinct addresses
    reported it within `rule.window`. Whether this call recorded a report.

    Race-safe: the count is read after taking the sender's row lock, so that of
    reports arriving at once the last to count sees all the others.
    """
    reporter = address_hashes(invitation.address, keys)[0]
    sender = invitation.sender
    if not refusals.add_report(reporter, sender, now=now):
        return False
    metrics.GUEST_CHOICES.labels("reported").inc()
    refusals.lock_sender(sender, now=now)
    count = refusals.reporters_since(sender, now - rule.window)
    logger.info("Invitation %s: its guest reported the sender (%s)", invitation.id, sender)
    if rule.threshold is not None and count >= rule.threshold and refusals.block(sender, now=now):
        logger.warning(
            "Sender %s blocked: %s distinct people reported it within %s day(s)",
            sender, count, rule.window.days,
        )  # fmt: skip
    return True


def check_sender(sender: str, *, rule: ReportRule, now: datetime) -> None:
    """Refuse an invitation from a sender blocked by reports.

    :raises MatrixError: 403 M_FORBIDDEN.
    """
    if refusals.is_blocked(sender, since=now - rule.window, threshold=rule.threshold):
        metrics.INVITATIONS_REFUSED.labels("sender_reported").inc()
        raise Forbidden(SENDER_BLOCKED)
