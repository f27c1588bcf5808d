"""Every query on the cache of homeservers' signing keys (shared by all workers)."""

from datetime import datetime

from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import ServerKey


def find(server_name: str, key_id: str, *, now: datetime) -> str | None:
    """The cached, still valid base64 verify key, or None."""
    key = db.session.get(ServerKey, (server_name, key_id))
    return key.verify_key if key is not None and key.valid_until > now else None


def store(server_name: str, keys: dict[str, str], valid_until: datetime, now: datetime) -> None:
    existing = {
        k.key_id: k
        for k in db.session.scalars(select(ServerKey).filter_by(server_name=server_name))
    }
    for key_id, verify_key in keys.items():
        row = existing.get(key_id) or ServerKey(server_name=server_name, key_id=key_id)
        row.verify_key, row.valid_until, row.fetched_at = verify_key, valid_until, now
        db.session.add(row)
    db.session.flush()
