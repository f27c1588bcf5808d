"""The lookup peppers: the newest activated one is current, a newer pending one is
being rotated in."""

import secrets
from datetime import datetime

from sqlalchemy import select

from identity.extensions import db
from identity.storage.hot_reads import fetch_one
from identity.storage.models import Pepper


def new_value() -> str:
    # Letters and digits only: clients put it in a string they hash.
    return secrets.token_hex(16)


def current(now: datetime) -> Pepper:
    """The current pepper, created on first use."""
    pepper = db.session.scalar(
        select(Pepper).where(Pepper.activated_at.is_not(None)).order_by(Pepper.id.desc()).limit(1)
    )
    if pepper is None:
        pepper = Pepper(value=new_value(), created_at=now, slot=0, activated_at=now)
        db.session.add(pepper)
        db.session.flush()
    return pepper


_peppers = Pepper.__table__.c
_CURRENT = (
    select(_peppers.value, _peppers.slot)
    .where(_peppers.activated_at.is_not(None))
    .order_by(_peppers.id.desc())
    .limit(1)
)


def current_value_and_slot(now: datetime) -> tuple[str, int]:
    """The current pepper and its slot, fast (read on committed data: for lookups)."""
    row = fetch_one(_CURRENT)
    if row is None:  # the very first use creates it
        pepper = current(now)
        return pepper.value, pepper.slot
    return row[0], row[1]


def current_pepper(now: datetime) -> str:
    return current_value_and_slot(now)[0]


def pending() -> Pepper | None:
    """The pepper being rotated in, if a rotation is under way."""
    return db.session.scalar(
        select(Pepper).where(Pepper.activated_at.is_(None)).order_by(Pepper.id.desc()).limit(1)
    )


def start_pending(slot: int, now: datetime) -> Pepper:
    pepper = Pepper(value=new_value(), created_at=now, slot=slot, activated_at=None)
    db.session.add(pepper)
    db.session.flush()
    return pepper


def all_peppers() -> list[str]:
    """Every pepper, newest first."""
    return list(db.session.scalars(select(Pepper.value).order_by(Pepper.id.desc())))


def add(pepper: str, now: datetime) -> None:
    """Make `pepper` the current one, in the current one's slot (the caller rehashes)."""
    slot = current(now).slot
    db.session.add(Pepper(value=pepper, created_at=now, slot=slot, activated_at=now))
    db.session.flush()
