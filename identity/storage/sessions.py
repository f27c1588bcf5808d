"""Every query on email validation sessions."""

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import ValidationSession


def find(medium: str, address: str, client_secret: str) -> ValidationSession | None:
    return db.session.scalar(
        select(ValidationSession).filter_by(
            medium=medium, address=address, client_secret=client_secret
        )
    )


def get(sid: str, client_secret: str) -> ValidationSession | None:
    return db.session.scalar(
        select(ValidationSession).filter_by(sid=sid, client_secret=client_secret)
    )


def create(session: ValidationSession) -> ValidationSession:
    db.session.add(session)
    db.session.flush()
    return session


def remove(session: ValidationSession) -> None:
    db.session.delete(session)
    db.session.flush()


def delete_expired(before: datetime) -> int:
    """Delete sessions whose last change is older than `before`; return how many."""
    result = db.session.execute(
        delete(ValidationSession).where(ValidationSession.updated_at < before)
    )
    return result.rowcount or 0


def delete_for_address(medium: str, address: str) -> int:
    result = db.session.execute(delete(ValidationSession).filter_by(medium=medium, address=address))
    return result.rowcount or 0
