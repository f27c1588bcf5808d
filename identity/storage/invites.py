"""Every query on pending 3PID invitations."""

from datetime import datetime
from datetime import timedelta

from sqlalchemy import ColumnElement
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import literal
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update

from identity.extensions import db
from identity.storage.models import Delivery
from identity.storage.models import EphemeralKey
from identity.storage.models import Invitation
from identity.storage.models import UTCDateTime
from identity.storage.results import rowcount


def add(invitation: Invitation) -> Invitation:
    db.session.add(invitation)
    db.session.flush()
    return invitation


def by_token(token: str) -> Invitation | None:
    return db.session.scalar(select(Invitation).filter_by(token=token))


def by_token_prefix(prefix: str, *, limit: int = 2) -> list[Invitation]:
    """The invitation whose token is `prefix`, else at most `limit` whose token starts with it."""
    exact = by_token(prefix)
    if exact is not None:
        return [exact]
    query = (
        select(Invitation)
        .where(Invitation.token.startswith(prefix, autoescape=True))
        .order_by(Invitation.id)
        .limit(limit)
    )
    return list(db.session.scalars(query))


def _live(now: datetime) -> list[ColumnElement[bool]]:
    return [Invitation.pending_at(now)]


def deliverable_to(medium: str, address: str, mxid: str, *, now: datetime) -> list[Invitation]:
    """The address's invitations a bind to `mxid` may hand over: neither expired, revoked
    nor handed over yet, and admitting no account or `mxid` itself.

    Only candidates: `hand_over` decides, atomically, which ones are handed over.
    """
    query = (
        select(Invitation)
        .filter_by(medium=medium, address=address)
        .where(
            Invitation.open_at(now),
            Invitation.handed_over_at.is_(None),
            _admits_none_or(mxid),
        )
        .order_by(Invitation.id)
    )
    return list(db.session.scalars(query))


def admitting_others(medium: str, address: str, mxid: str, *, now: datetime) -> int:
    """How many live invitations of the address a bind to `mxid` may not hand over,
    because each admitted another account."""
    query = (
        select(func.count())
        .select_from(Invitation)
        .filter_by(medium=medium, address=address)
        .where(
            Invitation.open_at(now),
            Invitation.handed_over_at.is_(None),
            Invitation.admitted_mxid != mxid,
        )
    )
    return db.session.scalar(query) or 0


def _admits_none_or(mxid: str) -> ColumnElement[bool]:
    return or_(Invitation.admitted_mxid.is_(None), Invitation.admitted_mxid == mxid)


# Invitations are admitted and handed over by conditional UPDATEs, never by reading a
# row and writing it back: two requests racing on one invitation (threads, workers or
# hosts) cannot both see it free. PostgreSQL makes the second UPDATE wait for the first
# transaction and re-checks the WHERE clause on the committed row; SQLite lets one
# writer at a time. Whoever loses reads the winner back.


def admit(invitation_id: int, mxid: str, *, now: datetime) -> str | None:
    """Make `mxid` the account the invitation admits, unless it admits one already.

    :returns: the account the invitation admits now (`mxid`, or the one before it).
    """
    db.session.execute(
        update(Invitation)
        .where(Invitation.id == invitation_id, Invitation.admitted_mxid.is_(None))
        .values(admitted_mxid=mxid, accepted_at=now)
        .execution_options(synchronize_session=False)
    )
    return db.session.scalar(select(Invitation.admitted_mxid).where(Invitation.id == invitation_id))


def hand_over(invitation_id: int, mxid: str, *, now: datetime) -> bool:
    """Mark the invitation handed over to a bind of `mxid`, admitting `mxid` unless it
    admits another account; False when another bind handed it over or another account
    is admitted (then no delivery may be queued)."""
    moment = literal(now, UTCDateTime())
    result = db.session.execute(
        update(Invitation)
        .where(
            Invitation.id == invitation_id,
            Invitation.handed_over_at.is_(None),
            _admits_none_or(mxid),
        )
        .values(
            handed_over_at=moment,
            admitted_mxid=func.coalesce(Invitation.admitted_mxid, mxid),
            accepted_at=func.coalesce(Invitation.accepted_at, moment),
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def has_live(medium: str, address: str, *, now: datetime) -> bool:
    query = select(Invitation.id).filter_by(medium=medium, address=address).where(*_live(now))
    return db.session.scalar(query.limit(1)) is not None


def has_lapsed(medium: str, address: str, room_id: str, *, now: datetime) -> bool:
    """Whether an invitation of the address to the room expired or was revoked before
    anyone accepted it (the guest may still hold its mail)."""
    query = (
        select(Invitation.id)
        .filter_by(medium=medium, address=address, room_id=room_id)
        .where(~Invitation.open_at(now), Invitation.accepted_at.is_(None))
    )
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
        # Neither revoked nor accepted, and no longer open.
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
    return rowcount(db.session.execute(query)) or 0


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
    return rowcount(result) or 0


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
    return rowcount(result) or 0


# -- the reminder (identity.reminders) --------------------------------------------------
# Claimed like the onbind deliveries, by a conditional UPDATE: whoever's UPDATE matched
# the row owns the reminder until the lease ends; a concurrent one (thread, process or
# host) matches nothing. PostgreSQL re-checks the WHERE clause on the committed row,
# SQLite lets one writer at a time.


def _reminder_due(now: datetime, lead: timedelta, max_attempts: int) -> list[ColumnElement[bool]]:
    return [
        Invitation.pending_at(now),
        Invitation.reminder_key.is_not(None),
        Invitation.reminded_at.is_(None),
        Invitation.expires_at <= now + lead,
        or_(Invitation.reminder_claimed_until.is_(None), Invitation.reminder_claimed_until <= now),
        Invitation.reminder_attempts < max_attempts,
    ]


def due_reminders(*, now: datetime, lead: timedelta, max_attempts: int, limit: int) -> list[int]:
    """The ids of pending invitations whose reminder is due and unclaimed, soonest
    expiry first: candidates only, `claim_reminder` decides."""
    query = (
        select(Invitation.id)
        .where(*_reminder_due(now, lead, max_attempts))
        .order_by(Invitation.expires_at, Invitation.id)
        .limit(limit)
    )
    return list(db.session.scalars(query))


def claim_reminder(
    invitation_id: int, *, now: datetime, lead: timedelta, max_attempts: int, until: datetime
) -> bool:
    """Claim the invitation's reminder until `until`, counting an attempt, if it is still
    due and nobody holds it; False when another worker took it or it is no longer due."""
    result = db.session.execute(
        update(Invitation)
        .where(Invitation.id == invitation_id, *_reminder_due(now, lead, max_attempts))
        .values(
            reminder_claimed_until=until,
            reminder_attempts=Invitation.reminder_attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def mark_reminded(invitation_id: int, *, now: datetime) -> None:
    """The SMTP server accepted the reminder: never another one; the sealed key, needed
    for nothing more, is emptied."""
    db.session.execute(
        update(Invitation)
        .where(Invitation.id == invitation_id)
        .values(reminded_at=now, reminder_claimed_until=None, reminder_key=None)
        .execution_options(synchronize_session=False)
    )


def retry_reminder_at(invitation_id: int, moment: datetime) -> None:
    """A failed attempt: the reminder waits until `moment` (its claim held until then)."""
    db.session.execute(
        update(Invitation)
        .where(Invitation.id == invitation_id, Invitation.reminded_at.is_(None))
        .values(reminder_claimed_until=moment)
        .execution_options(synchronize_session=False)
    )


def give_up_reminder(invitation_id: int) -> None:
    """No reminder can be made (its key no longer opens): none is attempted again."""
    db.session.execute(
        update(Invitation)
        .where(Invitation.id == invitation_id, Invitation.reminded_at.is_(None))
        .values(reminder_key=None, reminder_claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def reminder_counts(*, now: datetime) -> tuple[int, int]:
    """(reminders sent, reminders waiting: pending invitations with one still to send)."""
    sent = select(func.count()).select_from(Invitation).where(Invitation.reminded_at.is_not(None))
    waiting = (
        select(func.count())
        .select_from(Invitation)
        .where(
            Invitation.pending_at(now),
            Invitation.reminder_key.is_not(None),
            Invitation.reminded_at.is_(None),
        )
    )
    return db.session.scalar(sent) or 0, db.session.scalar(waiting) or 0
