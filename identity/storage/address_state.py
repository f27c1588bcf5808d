"""One round trip for what /info needs to know about an address."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BindParameter
from sqlalchemy import bindparam
from sqlalchemy import exists
from sqlalchemy import select

from identity.storage.hot_reads import fetch_one
from identity.storage.models import Association
from identity.storage.models import Invitation

_associations = Association.__table__.c
_invitations = Invitation.__table__.c
_MEDIUM: BindParameter[str] = bindparam("medium")
_ADDRESS: BindParameter[str] = bindparam("address")
_NOW: BindParameter[datetime] = bindparam("now")

_STATE = select(
    select(_associations.mxid)
    .where(_associations.medium == _MEDIUM, _associations.address == _ADDRESS)
    .scalar_subquery(),
    exists().where(
        _invitations.medium == _MEDIUM,
        _invitations.address == _ADDRESS,
        Invitation.pending_at(_NOW),
    ),
)


@dataclass(frozen=True)
class AddressState:
    mxid: str | None  # the Matrix ID the address is bound to
    invited: bool  # whether an invitation for it can still be accepted


def address_state(medium: str, address: str, *, now: datetime) -> AddressState:
    # One row, always: a SELECT of two subqueries.
    mxid, invited = fetch_one(_STATE, medium=medium, address=address, now=now) or (None, False)
    return AddressState(mxid=mxid, invited=bool(invited))
