"""Every query on email validation sessions.

Concurrent requests for one session are decided here, in single statements, so that
they hold on SQLite and PostgreSQL alike under any number of workers: a session is
inserted unless present (ON CONFLICT DO NOTHING), a send attempt and a code check are
claimed by a conditional UPDATE whose row count says who won.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from identity.extensions import db
from identity.storage.models import ValidationSession
from identity.storage.results import rowcount

# Each dialect's INSERT, which has ON CONFLICT DO NOTHING.
_INSERT: dict[str, Callable[..., Any]] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def find(medium: str, address: str, client_secret: str) -> ValidationSession | None:
    return db.session.scalar(
        select(ValidationSession)
        .filter_by(medium=medium, address=address, client_secret=client_secret)
        .execution_options(populate_existing=True)
    )


def get(sid: str, client_secret: str) -> ValidationSession | None:
    return db.session.scalar(
        select(ValidationSession).filter_by(sid=sid, client_secret=client_secret)
    )


def create_or_get(session: ValidationSession) -> tuple[ValidationSession, bool]:
    """Store `session` unless one exists for its (medium, address, client_secret).

    Identical requests arriving at once all get here: exactly one inserts, the others
    wait for it and read its session instead of failing on the unique key.

    :returns: the stored session, and whether it is the one given (newly inserted).
    """
    columns = [c for c in ValidationSession.__table__.columns if not c.primary_key]
    values = {c.name: getattr(session, c.key) for c in columns}
    insert = _INSERT[db.session.get_bind().dialect.name]
    statement = (
        insert(ValidationSession)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(ValidationSession.id)  # a row when inserted: row counts vary by driver
    )
    # A session removed between the conflict and the read (purged, or replaced after
    # expiry by a concurrent request) is rare: insert again.
    for _ in range(3):
        inserted = db.session.execute(statement).first() is not None
        stored = find(session.medium, session.address, session.client_secret)
        if stored is not None:
            return stored, inserted
    raise RuntimeError("validation session vanished while being created")


def remove_expired(session: ValidationSession, cutoff: datetime) -> None:
    """Delete `session` if its last change is no later than `cutoff`.

    The condition keeps safe the fresh session a concurrent request may have put in
    its place.
    """
    db.session.execute(
        delete(ValidationSession)
        .where(ValidationSession.id == session.id, ValidationSession.updated_at <= cutoff)
        .execution_options(synchronize_session=False)
    )
    db.session.expunge(session)


def claim_send_attempt(
    session: ValidationSession,
    send_attempt: int,
    *,
    next_link: str | None,
    mailbox: str,
    brand: str | None,
    now: datetime,
) -> bool:
    """Move the session to `send_attempt` if it is still behind it; return whether it was.

    Of several requests carrying the same new attempt, only the one that moves it
    sends the mail.
    """
    values = {
        "send_attempt": send_attempt,
        "mailbox": mailbox,
        "brand": brand,
        "updated_at": now,
    }
    if next_link is not None:
        values["next_link"] = next_link
    result = db.session.execute(
        update(ValidationSession)
        .where(ValidationSession.id == session.id, ValidationSession.send_attempt < send_attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.session.refresh(session)
    return rowcount(result) == 1


def claim_code_check(session: ValidationSession, max_attempts: int) -> bool:
    """Count one code check against the session, unless `max_attempts` are used up.

    Claimed before the code is compared, so that concurrent guesses each need a slot
    of their own: no more than `max_attempts` wrong codes are ever compared. A right
    code gives its slot back (`mark_validated`).
    """
    result = db.session.execute(
        update(ValidationSession)
        .where(
            ValidationSession.id == session.id,
            ValidationSession.failed_attempts < max_attempts,
        )
        .values(failed_attempts=ValidationSession.failed_attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def mark_validated(session: ValidationSession, now: datetime) -> None:
    """Record the right code (validated at `now` unless it already was), giving back
    the code check it claimed."""
    db.session.execute(
        update(ValidationSession)
        .where(ValidationSession.id == session.id)
        .values(failed_attempts=ValidationSession.failed_attempts - 1)
        .execution_options(synchronize_session=False)
    )
    db.session.execute(
        update(ValidationSession)
        .where(ValidationSession.id == session.id, ValidationSession.validated_at.is_(None))
        .values(validated_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.refresh(session)


def delete_expired(before: datetime) -> int:
    """Delete sessions whose last change is older than `before`; return how many."""
    result = db.session.execute(
        delete(ValidationSession).where(ValidationSession.updated_at < before)
    )
    return rowcount(result) or 0


def delete_for_address(medium: str, address: str) -> int:
    result = db.session.execute(delete(ValidationSession).filter_by(medium=medium, address=address))
    return rowcount(result) or 0
