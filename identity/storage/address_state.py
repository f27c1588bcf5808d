"""One round trip for what /info needs to know about an address.

/info is the most frequent request (clients ask it before every login and
registration), and the only one whose database work is a single read. It runs
one statement, compiled once per dialect, on a pooled DB-API connection: SQLAlchemy's
Connection and Result layers cost about a fifth of /info's throughput
(docs/performance.md), more than the query itself.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import exists
from sqlalchemy import select
from sqlalchemy.engine import Dialect

from identity.extensions import db
from identity.storage.models import Association
from identity.storage.models import Invitation
from identity.storage.models import UTCDateTime

_associations = Association.__table__.c
_invitations = Invitation.__table__.c
_MEDIUM, _ADDRESS, _NOW = bindparam("medium"), bindparam("address"), bindparam("now")

_STATE = select(
    select(_associations.mxid)
    .where(_associations.medium == _MEDIUM, _associations.address == _ADDRESS)
    .scalar_subquery(),
    exists().where(
        _invitations.medium == _MEDIUM,
        _invitations.address == _ADDRESS,
        _invitations.expires_at > _NOW,
        _invitations.revoked_at.is_(None),
        _invitations.accepted_at.is_(None),
    ),
)


@dataclass(frozen=True)
class AddressState:
    mxid: str | None  # the Matrix ID the address is bound to
    invited: bool  # whether an invitation for it can still be accepted


@dataclass(frozen=True)
class _Prepared:
    sql: str
    positions: tuple[str, ...] | None  # parameter order for positional paramstyles
    time_to_db: Callable[[datetime], Any]


@functools.cache
def _prepare(dialect: Dialect) -> _Prepared:
    compiled = _STATE.compile(dialect=dialect)
    positions = compiled.positiontup
    to_db = UTCDateTime().bind_processor(dialect) or (lambda value: value)
    return _Prepared(str(compiled), tuple(positions) if positions else None, to_db)


def address_state(medium: str, address: str, *, now: datetime) -> AddressState:
    engine = db.engine
    prepared = _prepare(engine.dialect)
    values = {"medium": medium, "address": address, "now": prepared.time_to_db(now)}
    params: Any = values
    if prepared.positions is not None:
        params = tuple(values[name] for name in prepared.positions)
    connection = engine.raw_connection()  # from the pool, rolled back when returned
    try:
        cursor = connection.cursor()
        cursor.execute(prepared.sql, params)
        mxid, invited = cursor.fetchone()
    finally:
        connection.close()
    return AddressState(mxid=mxid, invited=bool(invited))
