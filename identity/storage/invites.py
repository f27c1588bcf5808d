"""Every query on pending 3PID invitations."""

from datetime import datetime
from datetime import timedelta

from sqlalchemy import ColumnElement
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update

from identity.extensions import db
from identity.storage.models import Delivery
from identity.storage.models import EphemeralKey
from identity.storage.models import Invitation


def add(invitation: Invitation) -> Invitation:
    db.session.add(invitation)
    db.session.flush()
    return invitation


def by_token(token: str) -> Invitation | None:
    return db.session.scalar(select(Invitation).filter_by(token=token))


def _live(now: datetime) -> list[ColumnElement[bool]]:
    return [
        Invitation.expires_at > now,
        Invitation.revoked_at.is_(None),
        Invitation.accepted_at.is_(None),
    ]


def live_for(medium: str, address: str, *, now: datetime, lock: bool = False) -> list[Invitation]:
    """Invitations for the address that are neither expired, revoked nor accepted.

    :param lock: lock the rows until the transaction ends, so that two binds of the
        same address cannot both hand an invitation over (PostgreSQL re-checks the
        conditions once the other transaction has committed).
    """
    query = (
        select(Invitation)
        .filter_by(medium=medium, address=address)
        .where(*_live(now))
        .order_by(Invitation.id)
    )
    if lock:
        query = query.with_for_update()
    return list(db.session.scalars(query))


def has_live(medium: str, address: str, *, now: datetime) -> bool:
    query = select(Invitation.id).filter_by(medium=medium, address=address).where(*_live(now))
    return db.session.scalar(query.limit(1)) is not None


# What `search` and `state_of` call an invitation, in order of precedence.
STATES = ("revoked", "accepted", "expired", "pending")


def _in_state(state: str, now: datetime) -> list[ColumnElement[bool]]:
    """SQL conditions for the invitations in `state` at `now` (see `state_of`)."""
    not_revoked = Invitation.revoked_at.is_(None)
    if state == "revoked":
        return [Invitation.revoked_at.is_not(None)]
    if state == "accepted":
        return [not_revoked, Invitation.accepted_at.is_not(None)]
    if state == "expired":
        return [not_revoked, Invitation.accepted_at.is_(None), Invitation.expires_at <= now]
    if state == "pending":
        return _live(now)
    raise ValueError(f"unknown invitation state {state!r}")


def state_of(invitation: Invitation, now: datetime) -> str:
    """revoked, else accepted, else expired, else pending: the same rules as `_in_state`."""
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.expires_at <= now:
        return "expired"
    return "pending"


def search(
    *,
    address: str | None = None,
    room_id: str | None = None,
    sender: str | None = None,
    state: str | None = None,
    now: datetime | None = None,
    limit: int = 100,
) -> list[Invitation]:
    """The newest invitations, optionally for one address, room, sender or state.

    :param state: one of STATES; `now` is then required (expiry depends on it).
    """
    query = select(Invitation).order_by(Invitation.id.desc()).limit(limit)
    if address is not None:
        query = query.filter_by(address=address)
    if room_id is not None:
        query = query.filter_by(room_id=room_id)
    if sender is not None:
        query = query.filter_by(sender=sender)
    if state is not None:
        if now is None:
            raise ValueError("searching by state needs `now`")
        query = query.where(*_in_state(state, now))
    return list(db.session.scalars(query))


def revoke(
    *,
    now: datetime,
    token: str | None = None,
    address: str | None = None,
    room_id: str | None = None,
) -> int:
    """Mark the matching invitations that are not yet revoked as revoked; return how many."""
    query = update(Invitation).where(Invitation.revoked_at.is_(None)).values(revoked_at=now)
    if token is not None:
        query = query.where(Invitation.token == token)
    if address is not None:
        query = query.where(Invitation.address == address)
    if room_id is not None:
        query = query.where(Invitation.room_id == room_id)
    return db.session.execute(query).rowcount or 0


def delete_expired(*, now: datetime, older_than: timedelta = timedelta(0)) -> int:
    """Delete invitations expired for at least `older_than`, with their keys and delivery jobs.

    The dependent rows are deleted explicitly: SQLite does not enforce foreign keys
    by default, and an ephemeral key left without its invitation must not stay valid.
    """
    cutoff = now - older_than
    expired = select(Invitation.id).where(Invitation.expires_at <= cutoff).scalar_subquery()
    db.session.execute(delete(EphemeralKey).where(EphemeralKey.invitation_id.in_(expired)))
    db.session.execute(delete(Delivery).where(Delivery.invitation_id.in_(expired)))
    result = db.session.execute(delete(Invitation).where(Invitation.expires_at <= cutoff))
    return result.rowcount or 0


def created_since(
    since: datetime,
    *,
    medium: str | None = None,
    address: str | None = None,
    sender: str | None = None,
) -> tuple[int, datetime | None]:
    """How many invitations were created since `since` for an address or by a sender,
    and when the oldest of them was (counting expired and revoked ones too)."""
    query = select(func.count(), func.min(Invitation.created_at)).where(
        Invitation.created_at > since
    )
    if address is not None:
        query = query.filter_by(medium=medium, address=address)
    if sender is not None:
        query = query.filter_by(sender=sender)
    count, oldest = db.session.execute(query).one()
    return count, oldest


def by_id(invitation_id: int) -> Invitation | None:
    return db.session.get(Invitation, invitation_id)


def delete_for_address(medium: str, address: str) -> int:
    """Delete an address's invitations, with their keys and delivery jobs."""
    ids = select(Invitation.id).filter_by(medium=medium, address=address).scalar_subquery()
    db.session.execute(delete(EphemeralKey).where(EphemeralKey.invitation_id.in_(ids)))
    db.session.execute(delete(Delivery).where(Delivery.invitation_id.in_(ids)))
    result = db.session.execute(delete(Invitation).filter_by(medium=medium, address=address))
    return result.rowcount or 0
