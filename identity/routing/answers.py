"""The /info and /internal-info answers: which homeserver an address should use.

The answer's shape is a contract with existing clients (Tchap's Android, iOS and web
apps, and homeservers): `hs` is always present, `shadow_hs` only beside a protected
`hs`, `new_hs` only when the address is bound on another homeserver than its rules
give, and `requires_invite` only in the internal answer.
"""

from datetime import datetime
from typing import Any

from identity.matrix_ids import server_of
from identity.routing.table import Platform
from identity.routing.table import RoutingTable
from identity.storage import associations
from identity.storage.address_state import address_state


def homeserver_info(
    address: str,
    *,
    table: RoutingTable,
    trusted: bool,
    internal: bool,
    now: datetime,
) -> dict[str, Any]:
    """The answer for a normalised email address.

    :param trusted: whether the caller may learn protected server names (internal
        callers always may).
    :param internal: add `requires_invite` and `invited` for homeservers.
    """
    platform = table.resolve(address).platform
    answer: dict[str, Any] = servers_for(platform, trusted=trusted or internal)
    state = address_state("email", address, now=now)
    bound_server = server_of(state.mxid) if state.mxid is not None else None
    if bound_server is not None and bound_server.lower() not in platform.servers:
        answer = {"hs": bound_server, "new_hs": answer["hs"]}
    if internal:
        answer["requires_invite"] = platform.requires_invite
    if internal or platform.requires_invite:
        answer["invited"] = state.invited
    return answer


def servers_for(platform: Platform, *, trusted: bool) -> dict[str, str]:
    if platform.protected_server and trusted:
        return {"hs": platform.protected_server, "shadow_hs": platform.server}
    return {"hs": platform.server}


def may_bind(table: RoutingTable, address: str, mxid: str) -> bool:
    """Whether `mxid`'s server may hold `address`: one of its platform's servers, or the
    server it is bound on today (people keep their account when their administration
    moves to another platform)."""
    server = (server_of(mxid) or "").lower()
    if server in table.resolve(address).platform.servers:
        return True
    bound = associations.find("email", address)
    return bound is not None and (server_of(bound.mxid) or "").lower() == server
