"""Every query on 3PID ↔ Matrix ID associations."""

from collections.abc import Iterable
from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam
from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import InstrumentedAttribute

from identity.extensions import db
from identity.storage.hot_reads import fetch_one
from identity.storage.models import Association

# Keep IN lists well below every engine's limit on bound parameters.
_BATCH = 500


def find(medium: str, address: str) -> Association | None:
    return db.session.scalar(select(Association).filter_by(medium=medium, address=address))


class CommittedAssociation(NamedTuple):
    """An association as read by `find_committed`: the values, no ORM object."""

    medium: str
    address: str
    mxid: str
    created_at: datetime
    not_before: datetime
    not_after: datetime


_columns = Association.__table__.c
_FIND = select(
    _columns.medium, _columns.address, _columns.mxid,
    _columns.created_at, _columns.not_before, _columns.not_after,
).where(
    _columns.medium == bindparam("medium"), _columns.address == bindparam("address")
)  # fmt: skip


def find_committed(medium: str, address: str) -> CommittedAssociation | None:
    """`find` on committed data only, one round trip: for single lookups."""
    row = fetch_one(_FIND, medium=medium, address=address)
    return CommittedAssociation(*row) if row is not None else None


def save(association: Association) -> Association:
    db.session.add(association)
    db.session.flush()
    return association


def remove(association: Association) -> None:
    db.session.delete(association)
    db.session.flush()


def hash_column(slot: int) -> InstrumentedAttribute:
    """The column holding the lookup hashes of the pepper in `slot`."""
    return Association.lookup_hash_alt if slot else Association.lookup_hash


def mxids_by_hash(hashes: Iterable[str], *, slot: int, now: datetime) -> dict[str, str]:
    """{lookup_hash: mxid} for the live associations among `hashes` (in `slot`)."""
    found: dict[str, str] = {}
    hashes = list(dict.fromkeys(hashes))
    column = hash_column(slot)
    for start in range(0, len(hashes), _BATCH):
        rows = db.session.execute(
            select(column, Association.mxid).where(
                column.in_(hashes[start : start + _BATCH]),
                Association.not_after > now,
            )
        )
        found.update({h: mxid for h, mxid in rows})
    return found


def find_many(pairs: Iterable[tuple[str, str]], *, now: datetime) -> list[Association]:
    """The live associations among (medium, address) pairs."""
    by_medium: dict[str, list[str]] = {}
    for medium, address in dict.fromkeys(pairs):
        by_medium.setdefault(medium, []).append(address)
    found: list[Association] = []
    # One `medium = ? AND address IN (…)` per medium: every engine uses the unique
    # (medium, address) index for it, which SQLite does not for a row-value IN.
    for medium, addresses in by_medium.items():
        for start in range(0, len(addresses), _BATCH):
            found += db.session.scalars(
                select(Association).where(
                    Association.medium == medium,
                    Association.address.in_(addresses[start : start + _BATCH]),
                    Association.not_after > now,
                )
            )
    return found


def delete_for_mxid(medium: str, address: str, mxid: str) -> int:
    result = db.session.execute(
        delete(Association).filter_by(medium=medium, address=address, mxid=mxid)
    )
    return result.rowcount or 0


def addresses(medium: str) -> Iterator[str]:
    """Every bound address of a medium, streamed (there may be millions)."""
    query = select(Association.address).filter_by(medium=medium)
    yield from db.session.scalars(query.execution_options(yield_per=10_000))


def clear_slot(slot: int) -> None:
    """Empty a hash slot, so that a rotation can tell which rows it has done."""
    db.session.execute(update(Association).values({hash_column(slot).key: None}))


def missing_in_slot(slot: int, limit: int) -> list[tuple[int, str, str]]:
    """Up to `limit` (id, medium, address) of associations without a hash in `slot`."""
    query = (
        select(Association.id, Association.medium, Association.address)
        .where(hash_column(slot).is_(None))
        .order_by(Association.id)
        .limit(limit)
    )
    return [tuple(row) for row in db.session.execute(query)]


def set_hashes(slot: int, hashes: dict[int, str]) -> None:
    """Store {association id: hash} in `slot`."""
    column = hash_column(slot).key
    db.session.execute(
        update(Association),
        [{"id": association_id, column: value} for association_id, value in hashes.items()],
    )


def delete_for_address(medium: str, address: str) -> int:
    result = db.session.execute(delete(Association).filter_by(medium=medium, address=address))
    return result.rowcount or 0
