"""Every query on guests' refusals, reports of senders and senders' blocks.

Recording is insert-or-ignore on the unique keys: a guest's repeated one-click posts,
or two at once, leave one row and no error.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy import and_
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import literal
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from identity.extensions import db
from identity.storage.models import GuestRefusal
from identity.storage.models import Invitation
from identity.storage.models import InviteReport
from identity.storage.models import ReportedSender
from identity.storage.models import UTCDateTime
from identity.storage.results import rowcount

# Each dialect's INSERT, which has ON CONFLICT.
_INSERT: dict[str, Callable[..., Any]] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

ALL = "all"
SENDER = "sender"


def _insert() -> Callable[..., Any]:
    return _INSERT[db.session.get_bind().dialect.name]


def add_refusal(address_hash: str, scope: str, sender: str, *, now: datetime) -> bool:
    """Record a refusal unless it exists; whether this call recorded it."""
    statement = (
        _insert()(GuestRefusal)
        .values(address_hash=address_hash, scope=scope, sender=sender, created_at=now)
        .on_conflict_do_nothing()
        .returning(GuestRefusal.id)
    )
    return db.session.execute(statement).first() is not None


def _covering(hashes: list[str], sender: str) -> ColumnElement[bool]:
    return and_(
        GuestRefusal.address_hash.in_(hashes),
        or_(
            GuestRefusal.scope == ALL,
            and_(GuestRefusal.scope == SENDER, GuestRefusal.sender == sender),
        ),
    )


def refusal_scope(hashes: list[str], sender: str) -> str | None:
    """The scope of a refusal that covers an invitation from `sender` to the address
    of any of `hashes` ("all" before "sender"), None when there is none."""
    scopes = set(db.session.scalars(select(GuestRefusal.scope).where(_covering(hashes, sender))))
    return ALL if ALL in scopes else SENDER if SENDER in scopes else None


def remove_refusals(
    hashes: list[str], *, scope: str | None = None, sender: str | None = None
) -> int:
    """Delete the refusals of the address (of its hashes); of one scope, or of one
    sender's, when given. How many were deleted."""
    query = delete(GuestRefusal).where(GuestRefusal.address_hash.in_(hashes))
    if scope is not None:
        query = query.where(GuestRefusal.scope == scope)
    if sender is not None:
        query = query.where(GuestRefusal.sender == sender)
    return rowcount(db.session.execute(query)) or 0


def lift_covering(hashes: list[str], sender: str) -> int:
    """Delete the refusals that cover an invitation from `sender` (both scopes)."""
    result = db.session.execute(delete(GuestRefusal).where(_covering(hashes, sender)))
    return rowcount(result) or 0


def refusal_counts() -> dict[str, int]:
    """How many refusals of each scope are kept."""
    query = select(GuestRefusal.scope, func.count()).group_by(GuestRefusal.scope)
    return {scope: count for scope, count in db.session.execute(query).all()}


def most_refused_senders(limit: int) -> list[tuple[str, int]]:
    """The senders most refused with "not from this person", with their counts."""
    count = func.count().label("refusals")
    query = (
        select(GuestRefusal.sender, count)
        .where(GuestRefusal.scope == SENDER)
        .group_by(GuestRefusal.sender)
        .order_by(count.desc(), GuestRefusal.sender)
        .limit(limit)
    )
    return [(sender, n) for sender, n in db.session.execute(query).all()]


def revoke_refused(medium: str, address: str, *, sender: str | None, now: datetime) -> int:
    """Revoke, as refused, the address's open invitations (from `sender` only, when
    given); how many."""
    query = (
        update(Invitation)
        .where(Invitation.medium == medium, Invitation.address == address, Invitation.open_at(now))
        .values(revoked_at=now, refused_at=now)
        .execution_options(synchronize_session=False)
    )
    if sender is not None:
        query = query.where(Invitation.sender == sender)
    return rowcount(db.session.execute(query)) or 0


# -- reports ------------------------------------------------------------------


def add_report(reporter_hash: str, sender: str, *, now: datetime) -> bool:
    """Record a report unless this reporter reported this sender; whether it did."""
    statement = (
        _insert()(InviteReport)
        .values(reporter_hash=reporter_hash, sender=sender, created_at=now)
        .on_conflict_do_nothing()
        .returning(InviteReport.id)
    )
    return db.session.execute(statement).first() is not None


def lock_sender(sender: str, *, now: datetime) -> None:
    """Create or update the sender's row, which holds its lock until the transaction ends.

    Concurrent reports of one sender wait here for each other: each then counts, in a
    statement of its own, the reports committed before it (PostgreSQL's READ COMMITTED
    takes a new snapshot per statement); SQLite lets one writer at a time anyway.
    """
    insert = _insert()
    statement = (
        insert(ReportedSender)
        .values(sender=sender, last_report_at=now)
        .on_conflict_do_update(index_elements=[ReportedSender.sender], set_={"last_report_at": now})
    )
    db.session.execute(statement)


def reporters_since(sender: str, since: datetime) -> int:
    """How many distinct addresses reported `sender` after `since` (one row each)."""
    query = (
        select(func.count())
        .select_from(InviteReport)
        .where(InviteReport.sender == sender, InviteReport.created_at > since)
    )
    return db.session.scalar(query) or 0


def block(sender: str, *, now: datetime) -> bool:
    """Block the sender (its row exists: `lock_sender`); whether it was not yet blocked."""
    result = db.session.execute(
        update(ReportedSender)
        .where(ReportedSender.sender == sender, ReportedSender.blocked_at.is_(None))
        .values(blocked_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def is_blocked(sender: str, *, since: datetime, threshold: int | None) -> bool:
    """Whether the sender is blocked, or (with a threshold) reported by at least
    `threshold` distinct addresses after `since`: one statement."""
    blocked = (
        select(ReportedSender.sender)
        .where(ReportedSender.sender == sender, ReportedSender.blocked_at.is_not(None))
        .exists()
    )
    if threshold is None:
        return bool(db.session.scalar(select(blocked)))
    counted = (
        select(func.count())
        .select_from(InviteReport)
        .where(InviteReport.sender == sender, InviteReport.created_at > since)
        .scalar_subquery()
    )
    return bool(db.session.scalar(select(or_(blocked, counted >= literal(threshold)))))


def reported_senders(since: datetime, limit: int) -> list[tuple[str, int, int, datetime | None]]:
    """Reported senders, most reported first: (sender, reporters after `since`,
    reporters in all, blocked_at)."""
    recent = (
        func.count().filter(InviteReport.created_at > literal(since, UTCDateTime())).label("recent")
    )
    total = func.count().label("total")
    counts = select(InviteReport.sender, recent, total).group_by(InviteReport.sender).subquery()
    query = (
        select(ReportedSender.sender, counts.c.recent, counts.c.total, ReportedSender.blocked_at)
        .join(counts, counts.c.sender == ReportedSender.sender, isouter=True)
        .order_by(
            ReportedSender.blocked_at.is_(None), counts.c.recent.desc(), ReportedSender.sender
        )
        .limit(limit)
    )
    return [
        (sender, recent or 0, total or 0, blocked_at)
        for sender, recent, total, blocked_at in db.session.execute(query).all()
    ]


def clear_sender(sender: str) -> tuple[int, bool]:
    """Forget the reports of `sender` and lift its block: (reports deleted, was blocked)."""
    blocked = db.session.scalar(
        select(ReportedSender.blocked_at).where(ReportedSender.sender == sender)
    )
    reports = rowcount(
        db.session.execute(delete(InviteReport).where(InviteReport.sender == sender))
    )
    db.session.execute(delete(ReportedSender).where(ReportedSender.sender == sender))
    return reports or 0, blocked is not None
