"""Every query on 3PID ↔ Matrix ID associations."""

import json
from collections.abc import Iterable
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from typing import NamedTuple

from sqlalchemy import JSON
from sqlalchemy import CompoundSelect
from sqlalchemy import Select
from sqlalchemy import String
from sqlalchemy import bindparam
from sqlalchemy import cast
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import true
from sqlalchemy import union_all
from sqlalchemy import update
from sqlalchemy.orm import InstrumentedAttribute

from identity.extensions import db
from identity.storage.bulk import indexes_after_load
from identity.storage.hot_reads import fetch_all
from identity.storage.hot_reads import fetch_one
from identity.storage.models import Association
from identity.storage.results import rowcount

_INSERTED = [column for column in Association.__table__.columns if column.key != "id"]


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
# The columns not given: each one read costs SQLite's driver a few microseconds.
_FIND = select(
    _columns.mxid, _columns.created_at, _columns.not_before, _columns.not_after
).where(
    _columns.medium == bindparam("medium"), _columns.address == bindparam("address")
)  # fmt: skip


def find_committed(medium: str, address: str) -> CommittedAssociation | None:
    """`find` on committed data only, one round trip: for single lookups."""
    row = fetch_one(_FIND, medium=medium, address=address)
    return CommittedAssociation(medium, address, *row) if row is not None else None


def save(association: Association) -> Association:
    db.session.add(association)
    db.session.flush()
    return association


def insert_all(new: Iterable[Association]) -> None:
    """Insert new associations, one statement for all (their ids are not read back).

    The ORM's unit of work inserts rows one by one where it must read ids back (SQLite).
    On PostgreSQL, one COPY: an INSERT of many rows cost SQLAlchemy about 0.3 ms of
    Python a row (half a Sydent import's time on its associations).
    """
    connection = db.session.connection()
    if connection.dialect.name != "postgresql":
        values = [
            {column.key: getattr(association, column.key) for column in _INSERTED}
            for association in new
        ]
        if values:
            db.session.execute(insert(Association), values)
        return
    # Each value converted by its column's type, as an INSERT would.
    converters = [
        (column.key, column.type.bind_processor(connection.dialect)) for column in _INSERTED
    ]
    names = ", ".join(f'"{column.name}"' for column in _INSERTED)
    driver: Any = connection.connection.driver_connection  # psycopg's, for its COPY
    with driver.cursor() as cursor, cursor.copy(f"COPY association ({names}) FROM STDIN") as copy:
        for association in new:
            row = []
            for key, convert in converters:
                value = getattr(association, key)
                row.append(value if convert is None else convert(value))
            copy.write_row(row)


@contextmanager
def bulk_load() -> Iterator[bool]:
    """Around a load of many associations in the session's transaction: on an empty
    table (PostgreSQL), its indexes are built after the rows (`storage.bulk`). Yields
    whether the table was empty then."""
    with indexes_after_load(db.session.connection(), Association.__tablename__) as empty:
        yield empty


def remove(association: Association) -> None:
    db.session.delete(association)
    db.session.flush()


def hash_column(slot: int) -> InstrumentedAttribute:
    """The column holding the lookup hashes of the pepper in `slot`."""
    return Association.lookup_hash_alt if slot else Association.lookup_hash


def hash_columns(slot: int) -> tuple[InstrumentedAttribute, InstrumentedAttribute]:
    """The columns holding the lookup hashes of the pepper in `slot`: of the address's
    key, and of its Unicode spelling (identity.addresses.unicode_spelling)."""
    if slot:
        return Association.lookup_hash_alt, Association.lookup_hash_unicode_alt
    return Association.lookup_hash, Association.lookup_hash_unicode


def _by_hash(dialect: str, slot: int) -> Select | CompoundSelect:
    """(hash, mxid) of the live associations whose hash of either spelling in `slot` is
    among hashes given as one JSON list.

    One statement, whatever the number of hashes, with nothing rendered or parsed per
    hash in Python: for 1,000 hashes, two `IN (500 values)` statements spent two thirds
    of a worker's time in SQLAlchemy's rendering and psycopg's parsing of the values,
    and a PostgreSQL array parameter still costs psycopg a regular expression per value
    (to quote it), several milliseconds; `json.dumps` is one call in C.

    Each hash is searched in each spelling's index (the Unicode one partial: few rows).
    PostgreSQL is given no choice, as in `_bound_to`: each hash is one LATERAL probe
    (its LIMIT keeps the planner from flattening it into a join), which a table without
    statistics (one just imported) cannot turn into a scan of the whole table; with
    statistics it takes the time of `= ANY(array)` (docs/performance.md).
    """
    live = _columns.not_after > bindparam("now")
    if dialect == "postgresql":
        hashes = cast(bindparam("hashes", type_=String), JSON)
        wanted = func.json_array_elements_text(hashes).table_valued("value").alias("wanted")
        match = (
            union_all(
                *(
                    select(column.label("hash"), _columns.mxid).where(
                        column == wanted.c.value, live
                    )
                    for column in hash_columns(slot)
                )
            )
            .limit(1)
            .lateral("match")
        )
        return select(match.c.hash, match.c.mxid).select_from(wanted.join(match, true()))
    values = func.json_each(bindparam("hashes", type_=String)).table_valued("value")
    return union_all(
        *(
            select(column, _columns.mxid).where(column.in_(select(values.c.value)), live)
            for column in hash_columns(slot)
        )
    )


_BY_HASH = {
    (dialect, slot): _by_hash(dialect, slot)
    for dialect in ("postgresql", "sqlite")
    for slot in (0, 1)
}


def mxids_by_hash(hashes: Iterable[str], *, slot: int, now: datetime) -> dict[str, str]:
    """{lookup_hash: mxid} for the live committed associations among `hashes` (in
    `slot`), by the hash of either spelling. One statement, whatever the number of
    hashes."""
    dialect = db.session.get_bind().dialect.name
    wanted = list(dict.fromkeys(hashes))
    if not wanted:
        return {}
    # On committed data, as every read of a lookup request (storage.hot_reads).
    rows = fetch_all(_BY_HASH[dialect, slot], hashes=json.dumps(wanted), now=now)
    return {h: mxid for h, mxid in rows}


def _bound_to(dialect: str) -> Select:
    """(medium, address, mxid) of the live associations of one medium among addresses
    given as one JSON list: one parameter, not one per address (each of which SQLAlchemy
    renders and psycopg parses on every request, in statements too long for its cache).

    Every plan searches the unique (medium, address) index once per address, whatever the
    planner knows of the table. PostgreSQL is given no choice: it cannot flatten a
    LATERAL subquery with a LIMIT into a join, so each address is one probe. Left to
    choose, it read the whole table for `address = ANY(1,000 addresses)` at 100,000
    bindings (25 ms for 6), and for `IN (500 values)` on a table without statistics
    (one just filled: 60 ms and more); `ANY(ARRAY(subquery))`, a little faster at
    1,000,000 bindings, took 40 to 100 ms on 1,000 to 2,000 rows without statistics.
    SQLite searches the index for each value of an IN subquery.
    """
    live = (_columns.medium == bindparam("medium"), _columns.not_after > bindparam("now"))
    if dialect == "postgresql":
        addresses = cast(bindparam("addresses", type_=String), JSON)
        wanted = func.json_array_elements_text(addresses).table_valued("value").alias("wanted")
        match = (
            select(_columns.medium, _columns.address, _columns.mxid)
            .where(*live, _columns.address == wanted.c.value)
            .limit(1)
            .lateral("match")
        )
        return select(match.c.medium, match.c.address, match.c.mxid).select_from(
            wanted.join(match, true())
        )
    wanted = func.json_each(bindparam("addresses", type_=String)).table_valued("value")
    return select(_columns.medium, _columns.address, _columns.mxid).where(
        *live, _columns.address.in_(select(wanted.c.value))
    )


_BOUND_TO = {dialect: _bound_to(dialect) for dialect in ("postgresql", "sqlite")}


def bound_to(pairs: Iterable[tuple[str, str]], *, now: datetime) -> list[tuple[str, str, str]]:
    """(medium, address, mxid) of the live associations among (medium, address) pairs,
    ordered by medium and address (as Sydent answers a bulk lookup). One statement per
    medium, whatever the number of pairs."""
    by_medium: dict[str, dict[str, None]] = {}
    for medium, address in pairs:
        by_medium.setdefault(medium, {})[address] = None
    statement = _BOUND_TO[db.session.get_bind().dialect.name]
    found: list[tuple[str, str, str]] = []
    for medium, addresses in by_medium.items():
        values = {"medium": medium, "addresses": json.dumps(list(addresses)), "now": now}
        found += map(tuple, db.session.execute(statement, values))
    found.sort()
    return found


def delete_for_mxid(medium: str, address: str, mxid: str) -> int:
    result = db.session.execute(
        delete(Association).filter_by(medium=medium, address=address, mxid=mxid)
    )
    return rowcount(result) or 0


def addresses(medium: str) -> Iterator[str]:
    """Every bound address of a medium, streamed (there may be millions)."""
    query = select(Association.address).filter_by(medium=medium)
    yield from db.session.scalars(query.execution_options(yield_per=10_000))


def id_address_batches(medium: str, size: int = 5_000) -> Iterator[list[tuple[int, str]]]:
    """(id, address) of every association of a medium, about `size` at a time, by id.

    Pages by id instead of holding a cursor open, so that the caller may update each
    batch before it asks for the next; on the primary key alone, so that every page is
    an index range whatever the planner knows of the table.
    """
    after = 0
    query = select(Association.id, Association.medium, Association.address)
    while rows := db.session.execute(
        query.where(Association.id > after).order_by(Association.id).limit(size)
    ).all():
        batch = [(row_id, address) for row_id, row_medium, address in rows if row_medium == medium]
        if batch:
            yield batch
        after = rows[-1][0]


def clear_slot(slot: int) -> None:
    """Empty a hash slot, so that a rotation can tell which rows it has done."""
    db.session.execute(
        update(Association).values({column.key: None for column in hash_columns(slot)})
    )


def missing_in_slot(slot: int, limit: int, *, after: int = 0) -> list[tuple[int, str, str]]:
    """Up to `limit` (id, medium, address) of associations without a hash in `slot`,
    by id from `after`: a range of the primary key, as the hash indexes hold no NULLs
    (and a rotation that restarted from the first id each batch would walk over all
    the rows it has done, again and again)."""
    query = (
        select(Association.id, Association.medium, Association.address)
        .where(hash_column(slot).is_(None), Association.id > after)
        .order_by(Association.id)
        .limit(limit)
    )
    return [(row_id, medium, address) for row_id, medium, address in db.session.execute(query)]


def set_hashes(slot: int, hashes: dict[int, tuple[str, str | None]]) -> None:
    """Store {association id: (hash of the key, hash of the Unicode spelling)} in `slot`."""
    key, unicode = (column.key for column in hash_columns(slot))
    db.session.execute(
        update(Association),
        [
            {"id": association_id, key: value, unicode: unicode_value}
            for association_id, (value, unicode_value) in hashes.items()
        ],
    )


def delete_for_address(medium: str, address: str) -> int:
    result = db.session.execute(delete(Association).filter_by(medium=medium, address=address))
    return rowcount(result) or 0
