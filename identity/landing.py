"""The page a guest lands on from the invitation mail.

The mail's button carries an opaque token: the invitation's id, its ephemeral private
key (which the page needs to build the web client's `signurl`) and its creation time,
encrypted and authenticated with a key derived from the landing secret (NaCl's
SecretBox: XSalsa20-Poly1305). Nothing in the link is readable without the key, the
address never appears in it, and a forged or altered token is refused. The page
tells pending, accepted, expired and revoked invitations apart.

Links mailed before the tokens were encrypted (signed with itsdangerous, readable
base64 with dots in it) keep working until their invitations expire.
"""

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from enum import Enum
from typing import Any

from itsdangerous import BadSignature
from itsdangerous import SignatureExpired
from itsdangerous import URLSafeTimedSerializer
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from signedjson.types import SigningKey

from identity.matrix_ids import server_of
from identity.storage import invites
from identity.storage.models import Invitation

# Where the landing page lives (identity/pages.py serves it).
LANDING_PATH = "/_matrix/identity/invitation"
# The itsdangerous salt of the links mailed before tokens were encrypted.
_SALT = "invitation-landing"


class State(Enum):
    """What the page says; the value is the HTTP status it says it with."""

    PENDING = "pending", 200
    ACCEPTED = "accepted", 409  # it admitted an account (a signature or a bind)
    EXPIRED = "expired", 410
    REVOKED = "revoked", 410
    UNKNOWN = "unknown", 404  # a forged, altered or purged link

    def __init__(self, word: str, status: int) -> None:
        self.word = word  # what the template tests
        self.status = status


@dataclass(frozen=True)
class Landing:
    state: State
    invitation: Invitation | None = None
    ephemeral_private_key: str | None = None

    @property
    def status(self) -> int:
        return self.state.status


def secret_from(configured: str | None, signing_key: SigningKey) -> str:
    """The secret of landing links (their encryption key is derived from it): SECRET_KEY,
    or one derived from the signing key so that a deployment has nothing more to
    configure (and every worker agrees)."""
    if configured:
        return configured
    return hmac.new(signing_key.encode(), b"landing links", hashlib.sha256).hexdigest()


def landing_token(invitation: Invitation, ephemeral_private_key: str, secret: str) -> str:
    """The opaque token of the invitation's landing link (URL-safe base64, no dots)."""
    payload = [invitation.id, ephemeral_private_key, int(invitation.created_at.timestamp())]
    sealed = _box(secret).encrypt(json.dumps(payload, separators=(",", ":")).encode())
    return base64.urlsafe_b64encode(bytes(sealed)).rstrip(b"=").decode()


def _box(secret: str) -> SecretBox:
    # A key of its own, so that the landing secret itself never encrypts anything.
    key = hmac.new(secret.encode(), b"landing link encryption", hashlib.sha256).digest()
    return SecretBox(key)


def seal_key(ephemeral_private_key: str, secret: str) -> str:
    """The invitation's private key as the database keeps it for the reminder
    (Invitation.reminder_key): sealed under a key of its own, derived from the landing
    secret, which the database does not hold. Its reader cannot open it, nor use it as
    a landing link (a link's key is another one)."""
    sealed = _key_box(secret).encrypt(ephemeral_private_key.encode())
    return base64.urlsafe_b64encode(bytes(sealed)).rstrip(b"=").decode()


def unseal_key(sealed: str, secret: str) -> str | None:
    """The private key `seal_key` sealed; None when it cannot be opened (the landing
    secret changed since: SECRET_KEY, or the signing key it is derived from)."""
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        return _key_box(secret).decrypt(raw).decode()
    except (binascii.Error, CryptoError, ValueError):
        return None


def _key_box(secret: str) -> SecretBox:
    key = hmac.new(secret.encode(), b"stored invitation keys", hashlib.sha256).digest()
    return SecretBox(key)


def open_landing(token: str, *, secret: str, max_age_seconds: int, now: datetime) -> Landing:
    """Read a landing token and say what the page should show."""
    opened = _open_legacy(token, secret, max_age_seconds) if "." in token else _open(token, secret)
    if isinstance(opened, State):
        return Landing(opened)
    invitation_id, private_key, created = opened
    invitation = invites.by_id(invitation_id) if isinstance(invitation_id, int) else None
    if invitation is None:
        # Purged: a link old enough for its invitation to have expired says so.
        expired = created is not None and created + timedelta(seconds=max_age_seconds) <= now
        return Landing(State.EXPIRED if expired else State.UNKNOWN)
    return Landing(State[invites.state_of(invitation, now).upper()], invitation, private_key)


def _open(token: str, secret: str) -> tuple[Any, str, datetime | None] | State:
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        invitation_id, private_key, created = json.loads(_box(secret).decrypt(sealed))
        return invitation_id, str(private_key), datetime.fromtimestamp(int(created), UTC)
    except (binascii.Error, CryptoError, ValueError, TypeError, OverflowError):
        return State.UNKNOWN


def _open_legacy(token: str, secret: str, max_age_seconds: int) -> tuple[Any, str, None] | State:
    """A link mailed before tokens were encrypted: itsdangerous-signed [id, private key]."""
    serializer = URLSafeTimedSerializer(secret, salt=_SALT)
    try:
        invitation_id, private_key = serializer.loads(token, max_age=max_age_seconds)
    except SignatureExpired:
        return State.EXPIRED
    except (BadSignature, ValueError, TypeError):
        return State.UNKNOWN
    return invitation_id, str(private_key), None


def page_context(landing: Landing, details: dict[str, Any] | None) -> dict[str, Any]:
    """The template variables: the state, and for a known invitation who invites where
    and, once accepted, the server of the account it admitted (not the account: the
    link may have been forwarded, the page names nobody).

    :param details: the invitation's variables (identity.presentation), if it is known.
    """
    invitation = landing.invitation
    admitted = invitation.admitted_mxid if invitation is not None else None
    return {
        "state": landing.state.word,
        **(details or {}),
        "admitted_server": server_of(admitted or "") or "",
        # Revoked because its guest refused invitations (identity.refusals).
        "refused": invitation is not None and invitation.refused_at is not None,
    }
