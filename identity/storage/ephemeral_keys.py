"""Every query on the ephemeral public keys handed out with invitations."""

from datetime import datetime

from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import EphemeralKey
from identity.storage.models import Invitation


def add(public_key: str, invitation_id: int, now: datetime) -> None:
    db.session.add(EphemeralKey(public_key=public_key, invitation_id=invitation_id, created_at=now))
    db.session.flush()


def public_keys_of(invitation_id: int) -> list[str]:
    query = select(EphemeralKey.public_key).filter_by(invitation_id=invitation_id)
    return list(db.session.scalars(query))


def find_with_invitation(public_key: str) -> tuple[EphemeralKey, Invitation | None] | None:
    """The key and its invitation (None for a key linked to none), or None if unknown."""
    row = db.session.execute(
        select(EphemeralKey, Invitation)
        .outerjoin(Invitation, EphemeralKey.invitation_id == Invitation.id)
        .where(EphemeralKey.public_key == public_key)
    ).first()
    return None if row is None else (row[0], row[1])


def exists(public_key: str) -> bool:
    return db.session.scalar(select(EphemeralKey.id).filter_by(public_key=public_key)) is not None


def add_unlinked(public_key: str, now: datetime, verify_count: int = 0) -> None:
    """A key with no invitation of ours (imported from Sydent, which keeps no link)."""
    key = EphemeralKey(
        public_key=public_key, invitation_id=None, created_at=now, verify_count=verify_count
    )
    db.session.add(key)
    db.session.flush()
