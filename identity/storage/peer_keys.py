"""Every query on the public keys of the Sydent peers whose data was imported."""

from datetime import datetime

from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import PeerKey


def find(server_name: str) -> PeerKey | None:
    return db.session.get(PeerKey, server_name)


def by_public_key(public_key: str) -> PeerKey | None:
    return db.session.scalar(select(PeerKey).filter_by(public_key=public_key))


def is_known(public_key: str) -> bool:
    query = select(PeerKey.server_name).filter_by(public_key=public_key)
    return db.session.scalar(query) is not None


def save(server_name: str, public_key: str, now: datetime) -> PeerKey:
    """Record (or replace) the public key of `server_name`."""
    key = find(server_name) or PeerKey(server_name=server_name, created_at=now)
    key.public_key = public_key
    db.session.add(key)
    db.session.flush()
    return key
