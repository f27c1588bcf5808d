"""The lookup peppers: the newest activated one is current, a newer pending one is
being rotated in.

Migration 0003 creates the first pepper, so that every worker and request advertises the
same one from the first start. Should the table ever be emptied by hand, the first
request to need a pepper creates one in a transaction of its own, and only one: the
others wait for it and read it.
"""

import secrets
from datetime import datetime

from sqlalchemy import exists
from sqlalchemy import insert
from sqlalchemy import literal
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.sql.selectable import ScalarSelect

from identity.extensions import db
from identity.storage.hot_reads import fetch_one
from identity.storage.models import Pepper
from identity.storage.models import UTCDateTime

# PostgreSQL advisory lock serialising the creation of a missing first pepper.
_FIRST_PEPPER_LOCK = 0x70657070  # "pepp"


def new_value() -> str:
    # Letters and digits only: clients put it in a string they hash.
    return secrets.token_hex(16)


def current(now: datetime) -> Pepper:
    """The current pepper (created, committed, if the table was emptied)."""
    query = (
        select(Pepper).where(Pepper.activated_at.is_not(None)).order_by(Pepper.id.desc()).limit(1)
    )
    pepper = db.session.scalar(query)
    if pepper is None:
        create_first(now)
        pepper = db.session.scalars(query).one()
    return pepper


def create_first(now: datetime) -> None:
    """Create a current pepper unless there is one, and commit it at once.

    Runs in a transaction of its own, so that the pepper outlives the request that
    made it (a lookup commits nothing). Concurrent callers create one pepper in all:
    SQLite runs the conditional INSERT under its write lock, PostgreSQL callers take
    an advisory lock around it.
    """
    candidate = select(
        literal(new_value()),
        literal(now, UTCDateTime),
        literal(0),
        literal(now, UTCDateTime),
    ).where(~exists(select(Pepper.id).where(Pepper.activated_at.is_not(None))))
    columns = ["value", "created_at", "slot", "activated_at"]
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": _FIRST_PEPPER_LOCK})
        connection.execute(insert(Pepper).from_select(columns, candidate))


_peppers = Pepper.__table__.c
_CURRENT = (
    select(_peppers.value, _peppers.slot)
    .where(_peppers.activated_at.is_not(None))
    .order_by(_peppers.id.desc())
    .limit(1)
)


def current_columns() -> tuple[ScalarSelect, ScalarSelect]:
    """The current pepper's value and slot, as columns another hot read can select
    along with its own (the token check of every authenticated request does)."""
    return (
        _CURRENT.with_only_columns(_peppers.value).scalar_subquery(),
        _CURRENT.with_only_columns(_peppers.slot).scalar_subquery(),
    )


def current_value_and_slot(now: datetime) -> tuple[str, int]:
    """The current pepper and its slot, fast (read on committed data: for lookups)."""
    row = fetch_one(_CURRENT)
    if row is None:
        create_first(now)
        row = fetch_one(_CURRENT)
        assert row is not None
    return row[0], row[1]


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
