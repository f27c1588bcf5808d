"""The page a guest lands on from the invitation mail.

The mail's button carries an opaque signed token (itsdangerous): the invitation's id
and its ephemeral private key, which the page needs to build the web client's
`signurl`. The address never appears in the link, and a forged or altered token is
refused. The token expires with the invitation; the page also tells revoked and
accepted invitations apart.
"""

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from itsdangerous import BadSignature
from itsdangerous import SignatureExpired
from itsdangerous import URLSafeTimedSerializer
from nacl.signing import SigningKey

from identity.accounts import server_of
from identity.storage import invites
from identity.storage.models import Invitation

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
    """The key that signs landing links: SECRET_KEY, or one derived from the signing
    key so that a deployment has nothing more to configure (and every worker agrees)."""
    if configured:
        return configured
    return hmac.new(signing_key.encode(), b"landing links", hashlib.sha256).hexdigest()


def landing_token(invitation: Invitation, ephemeral_private_key: str, secret: str) -> str:
    return URLSafeTimedSerializer(secret, salt=_SALT).dumps([invitation.id, ephemeral_private_key])


def open_landing(token: str, *, secret: str, max_age_seconds: int, now: datetime) -> Landing:
    """Read a landing token and say what the page should show."""
    serializer = URLSafeTimedSerializer(secret, salt=_SALT)
    try:
        invitation_id, private_key = serializer.loads(token, max_age=max_age_seconds)
    except SignatureExpired:
        return Landing(State.EXPIRED)
    except (BadSignature, ValueError, TypeError):
        return Landing(State.UNKNOWN)
    invitation = invites.by_id(invitation_id) if isinstance(invitation_id, int) else None
    if invitation is None:
        return Landing(State.UNKNOWN)
    return Landing(State[invites.state_of(invitation, now).upper()], invitation, private_key)


def page_context(landing: Landing, mail_context: dict[str, Any] | None) -> dict[str, Any]:
    """The template variables: the state, and for a known invitation who invites where
    and, once accepted, the server of the account it admitted (not the account: the
    link may have been forwarded, the page names nobody)."""
    admitted = landing.invitation.admitted_mxid if landing.invitation is not None else None
    return {
        "state": landing.state.word,
        **(mail_context or {}),
        "admitted_server": server_of(admitted or "") or "",
    }
