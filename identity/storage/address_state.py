"""One round trip for what /info needs to know about an address."""

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import BindParameter
from sqlalchemy import bindparam
from sqlalchemy import func
from sqlalchemy import select

from identity.storage.hot_reads import fetch_one
from identity.storage.models import Association
from identity.storage.models import Invitation

_associations = Association.__table__.c
_invitations = Invitation.__table__.c
_MEDIUM: BindParameter[str] = bindparam("medium")
_ADDRESS: BindParameter[str] = bindparam("address")

# The clock is compared here rather than sent: on SQLite, a date parameter's
# formatting cost more than the rest of the read's work in Python.
_STATE = select(
    select(_associations.mxid)
    .where(_associations.medium == _MEDIUM, _associations.address == _ADDRESS)
    .scalar_subquery(),
    select(func.max(_invitations.expires_at))
    .where(_invitations.medium == _MEDIUM, _invitations.address == _ADDRESS)
    .where(Invitation.unanswered())
    .scalar_subquery(),
)


class AddressState(NamedTuple):
    mxid: str | None  # the Matrix ID the address is bound to
    invited: bool  # whether an invitation for it can still be accepted


def address_state(medium: str, address: str, *, now: datetime) -> AddressState:
    # One row, always: a SELECT of two subqueries.
    mxid, pending_until = fetch_one(_STATE, medium=medium, address=address) or (None, None)
    # Invitation.pending_at(now) of the latest unanswered invitation.
    return AddressState(mxid, pending_until is not None and pending_until > now)
