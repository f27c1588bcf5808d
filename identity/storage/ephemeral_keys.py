"""Every query on the ephemeral public keys handed out with invitations."""

from datetime import datetime

from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import EphemeralKey


def add(public_key: str, invitation_id: int, now: datetime) -> None:
    db.session.add(EphemeralKey(public_key=public_key, invitation_id=invitation_id, created_at=now))
    db.session.flush()


def is_known(public_key: str) -> bool:
    """Whether we issued the key; counts the check, as homeservers ask on each use."""
    key = db.session.scalar(select(EphemeralKey).filter_by(public_key=public_key))
    if key is None:
        return False
    key.verify_count += 1
    return True
