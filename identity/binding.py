"""Binding validated addresses to Matrix IDs, and removing those bindings."""

from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import Any

from signedjson.types import SigningKey

from identity import invitations
from identity import keys
from identity import validation
from identity.addresses import normalise_email
from identity.errors import BindingNotPermitted
from identity.errors import CallerNotAllowed
from identity.errors import Forbidden
from identity.errors import InvalidParam
from identity.errors import MissingParams
from identity.federation.client import FederationClient
from identity.federation.signatures import authenticate_request
from identity.lookup import association_json
from identity.lookup import hash_association
from identity.matrix_ids import server_of
from identity.routing import RoutingTable
from identity.routing.answers import may_bind
from identity.storage import associations
from identity.storage.models import Association

# Associations stay valid until unbound; the spec's not_after is then far away.
VALIDITY = timedelta(days=100 * 365)


@dataclass(frozen=True, eq=False)  # one per key (Services.signer): compared by identity
class Signer:
    """Signs what the service asserts with its long-term key."""

    server_name: str
    key: SigningKey

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        return keys.sign(payload, self.server_name, self.key)


@dataclass(frozen=True)
class SessionProof:
    """A validation session that proved the address (the client's proof)."""

    sid: str
    client_secret: str


@dataclass(frozen=True)
class SignedRequest:
    """An HTTP request a homeserver may have signed (X-Matrix), as it reached us."""

    method: str
    uri: str
    content: dict[str, Any]
    authorization: list[str]


def bind(
    proof: SessionProof,
    mxid: str,
    *,
    caller: str | None,
    now: datetime,
    session_lifetime: timedelta,
    signer: Signer,
    routing: RoutingTable | None = None,
) -> dict:
    """Bind the address a validation session proved to `mxid`; return the signed association.

    :param caller: the authenticated user (v2), who may only bind to themselves; None
        on the v1 path.
    :raises MatrixError: 403 M_FORBIDDEN when `caller` is not `mxid`, the session's
        errors (M_NO_VALID_SESSION, M_SESSION_EXPIRED, M_SESSION_NOT_VALIDATED), then
        those of `bind_address`.
    """
    if caller is not None and caller != mxid:
        raise CallerNotAllowed("You may only bind addresses to your own Matrix ID")
    session = validation.get_validated_session(
        proof.sid, proof.client_secret, now=now, lifetime=session_lifetime
    )
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
            f" on {server_of(mxid)} (the server's routing rules, RESTRICT_BINDS_TO_ROUTING)"
        )
    association = associations.find(medium, address) or Association(medium=medium, address=address)
    association.mxid = mxid
    hash_association(association, now=now)
    association.created_at = association.not_before = now
    association.not_after = now + VALIDITY
    associations.save(association)
    invitations.hand_over_pending(medium, address, mxid, now=now)
    return signer.sign(association_json(association))


def unbind(medium: str, address: str, mxid: str) -> None:
    """Remove the binding of `address` to `mxid`; unbinding what is not bound is a no-op."""
    associations.delete_for_mxid(medium, address, mxid)


def unbind_proven(
    threepid: dict[str, Any],
    mxid: str,
    proof: SessionProof | SignedRequest,
    *,
    server_name: str,
    federation: FederationClient,
    now: datetime,
    session_lifetime: timedelta,
) -> None:
    """Remove a binding, proven by the validation session or by the homeserver's signature.

    :param proof: the client's session, or the request as the homeserver signed it.
    :param server_name: ours, the destination a homeserver's signature must name.
    :param federation: fetches a homeserver's keys to check its signature.
    :raises MatrixError: M_MISSING_PARAMS for a threepid without medium or address,
        M_INVALID_EMAIL, the session's errors, 403 M_FORBIDDEN for a session that proved
        another address, an unsigned or badly signed request, or a homeserver acting
        for another server's user.
    """
    medium, address = threepid.get("medium"), threepid.get("address")
    if not isinstance(medium, str) or not isinstance(address, str):
        raise MissingParams("threepid must have a medium and an address")
    if medium == "email":
        address = normalise_email(address)
    if isinstance(proof, SessionProof):
        session = validation.get_validated_session(
            proof.sid, proof.client_secret, now=now, lifetime=session_lifetime
        )
        if (session.medium, session.address) != (medium, address):
            raise Forbidden("The validated session is for another address")
    else:
        if not any(h.startswith("X-Matrix") for h in proof.authorization):
            raise Forbidden("Send the sid and client_secret, or sign the request as the homeserver")
        origin = authenticate_request(
            proof.method,
            proof.uri,
            proof.content,
            proof.authorization,
            destination=server_name,
            federation=federation,
            now=now,
        )
        if server_of(mxid) != origin:
            raise Forbidden("The homeserver does not own this Matrix ID")
    unbind(medium, address, mxid)
