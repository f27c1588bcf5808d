"""Every query on 3PID ↔ Matrix ID associations."""

from collections.abc import Iterable
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import tuple_

from identity.extensions import db
from identity.storage.models import Association

# Keep IN lists well below every engine's limit on bound parameters.
_BATCH = 500


def find(medium: str, address: str) -> Association | None:
    return db.session.scalar(select(Association).filter_by(medium=medium, address=address))


def save(association: Association) -> Association:
    db.session.add(association)
    db.session.flush()
    return association


def remove(association: Association) -> None:
    db.session.delete(association)
    db.session.flush()


def mxids_by_hash(hashes: Iterable[str], *, now: datetime) -> dict[str, str]:
    """{lookup_hash: mxid} for the live associations among `hashes`."""
    found: dict[str, str] = {}
    hashes = list(dict.fromkeys(hashes))
    for start in range(0, len(hashes), _BATCH):
        rows = db.session.execute(
            select(Association.lookup_hash, Association.mxid).where(
                Association.lookup_hash.in_(hashes[start : start + _BATCH]),
                Association.not_after > now,
            )
        )
        found.update({h: mxid for h, mxid in rows})
    return found


def find_many(pairs: Iterable[tuple[str, str]], *, now: datetime) -> list[Association]:
    """The live associations among (medium, address) pairs."""
    pairs = list(dict.fromkeys(pairs))
    found: list[Association] = []
    for start in range(0, len(pairs), _BATCH):
        found += db.session.scalars(
            select(Association).where(
                tuple_(Association.medium, Association.address).in_(pairs[start : start + _BATCH]),
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
