"""The lookup pepper: the newest row is the current one."""

import secrets
from datetime import datetime

from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import Pepper


def current_pepper(now: datetime) -> str:
    """The current pepper, created on first use."""
    pepper = db.session.scalar(select(Pepper.value).order_by(Pepper.id.desc()).limit(1))
    if pepper is None:
        # Letters and digits only: clients put it in a string they hash.
        pepper = secrets.token_hex(16)
        db.session.add(Pepper(value=pepper, created_at=now))
        db.session.flush()
    return pepper


def all_peppers() -> list[str]:
    """Every pepper, newest (the current one) first."""
    return list(db.session.scalars(select(Pepper.value).order_by(Pepper.id.desc())))


def add(pepper: str, now: datetime) -> None:
    """Make `pepper` the current one."""
    db.session.add(Pepper(value=pepper, created_at=now))
    db.session.flush()
