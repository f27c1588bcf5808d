"""Binding validated addresses to Matrix IDs, and removing those bindings."""

from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import Any

from nacl.signing import SigningKey

from identity import invitations
from identity import keys
from identity.accounts import server_of
from identity.clock import to_ms
from identity.errors import BindingNotPermitted
from identity.errors import Forbidden
from identity.errors import InvalidParam
from identity.lookup import hash_association
from identity.routing import RoutingTable
from identity.routing.answers import may_bind
from identity.storage import associations
from identity.storage.associations import CommittedAssociation
from identity.storage.models import Association
from identity.storage.models import ValidationSession

# Associations stay valid until unbound; the spec's not_after is then far away.
VALIDITY = timedelta(days=100 * 365)


@dataclass(frozen=True)
class Signer:
    server_name: str
    key: SigningKey

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        return keys.sign(payload, self.server_name, self.key)


def bind(
    session: ValidationSession,
    mxid: str,
    *,
    now: datetime,
    signer: Signer,
    routing: RoutingTable | None = None,
) -> dict:
    """Bind the session's validated address to `mxid` and return the signed association.

    See `bind_address`.
    """
    return bind_address(
        session.medium, session.address, mxid, now=now, signer=signer, routing=routing
    )


def bind_address(
    medium: str,
    address: str,
    mxid: str,
    *,
    now: datetime,
    signer: Signer,
    routing: RoutingTable | None = None,
) -> dict:
    """Bind a proven address to `mxid` and return the signed association.

    The address was proven by a validation session, or by the homeserver itself at
    registration (the internal API). Rebinding replaces the previous Matrix ID.
    Pending invitations for the address are handed over for delivery to the new
    owner's homeserver in the same transaction.

    :param routing: when given, the address may only be bound on a homeserver of its
        platform (or the one it is bound on already), so that nobody on the externals'
        homeserver claims a ministry address.
    :raises MatrixError: M_INVALID_PARAM for a malformed Matrix ID, 400
        M_BINDING_NOT_PERMITTED for a Matrix ID on a homeserver the routing rules do not
        give (Tchap's errcode).
    """
    if server_of(mxid) is None:
        raise InvalidParam("mxid is not a valid Matrix user ID")
    if routing is not None and not may_bind(routing, address, mxid):
        platform = routing.resolve(address).platform
        raise BindingNotPermitted(
            f"This address belongs on {platform.server}: it cannot be bound to a Matrix ID"
            f" on {server_of(mxid)}"
        )
    association = associations.find(medium, address) or Association(
        medium=medium, address=address
    )
    association.mxid = mxid
    hash_association(association, now=now)
    association.created_at = association.not_before = now
    association.not_after = now + VALIDITY
    associations.save(association)
    invitations.hand_over_pending(medium, address, mxid, now=now)
    return signer.sign(association_json(association))


def association_json(association: Association | CommittedAssociation) -> dict[str, Any]:
    return {
        "address": association.address,
        "medium": association.medium,
        "mxid": association.mxid,
        "not_before": to_ms(association.not_before),
        "not_after": to_ms(association.not_after),
        "ts": to_ms(association.created_at),
    }


def unbind(medium: str, address: str, mxid: str) -> None:
    """Remove the binding of `address` to `mxid`; unbinding what is not bound is a no-op."""
    associations.delete_for_mxid(medium, address, mxid)


def check_session_matches(session: ValidationSession, medium: str, address: str) -> None:
    """:raises MatrixError: M_FORBIDDEN when the session proved another address."""
    if (session.medium, session.address) != (medium, address):
        raise Forbidden("The validated session is for another address")


def check_origin_owns(origin: str, mxid: str) -> None:
    """:raises MatrixError: M_FORBIDDEN when a homeserver acts for another server's user."""
    if server_of(mxid) != origin:
        raise Forbidden("The homeserver does not own this Matrix ID")
