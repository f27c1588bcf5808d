"""Every query on pending 3PID invitations."""

from datetime import datetime

from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import Invitation


def add(invitation: Invitation) -> Invitation:
    db.session.add(invitation)
    db.session.flush()
    return invitation


def by_token(token: str) -> Invitation | None:
    return db.session.scalar(select(Invitation).filter_by(token=token))


def live_for(medium: str, address: str, *, now: datetime) -> list[Invitation]:
    """Invitations for the address that are neither expired, revoked nor accepted."""
    return list(
        db.session.scalars(
            select(Invitation)
            .filter_by(medium=medium, address=address)
            .where(
                Invitation.expires_at > now,
                Invitation.revoked_at.is_(None),
                Invitation.accepted_at.is_(None),
            )
            .order_by(Invitation.id)
        )
    )
