"""Every query on accounts, their access tokens and the terms they accepted."""

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam
from sqlalchemy import delete
from sqlalchemy import select

from identity.extensions import db
from identity.storage import peppers
from identity.storage.hot_reads import fetch_one
from identity.storage.models import AcceptedTerms
from identity.storage.models import AccessToken
from identity.storage.models import Account


def ensure_account(user_id: str, now: datetime) -> Account:
    account = db.session.get(Account, user_id)
    if account is None:
        account = Account(user_id=user_id, created_at=now)
        db.session.add(account)
        db.session.flush()
    return account


def add_token(token_hash: str, user_id: str, now: datetime) -> None:
    db.session.add(AccessToken(token_hash=token_hash, user_id=user_id, created_at=now))
    db.session.flush()


def user_for_token(token_hash: str) -> str | None:
    return db.session.scalar(select(AccessToken.user_id).filter_by(token_hash=token_hash))


class TokenCheck(NamedTuple):
    """A token's user, and the current pepper read in the same statement."""

    user_id: str
    pepper: tuple[str, int] | None  # value and slot; None before the first pepper


_tokens = AccessToken.__table__.c
_USER_FOR_TOKEN = select(_tokens.user_id, *peppers.current_columns()).where(
    _tokens.token_hash == bindparam("token_hash")
)


def check_token(token_hash: str) -> TokenCheck | None:
    """`user_for_token` on committed data only, fast: for authenticating requests.

    The current pepper comes with it, in the same round trip: the requests that
    need one (hash_details, v2 lookups) are authenticated.
    """
    row = fetch_one(_USER_FOR_TOKEN, token_hash=token_hash)
    if row is None:
        return None
    user_id, value, slot = row
    return TokenCheck(user_id, (value, slot) if value is not None else None)


def delete_token(token_hash: str) -> None:
    db.session.execute(delete(AccessToken).filter_by(token_hash=token_hash))


def accepted_urls(user_id: str) -> set[str]:
    return set(db.session.scalars(select(AcceptedTerms.url).filter_by(user_id=user_id)))


def accept_urls(user_id: str, urls: set[str], now: datetime) -> None:
    for url in urls - accepted_urls(user_id):
        db.session.add(AcceptedTerms(user_id=user_id, url=url, accepted_at=now))
    db.session.flush()


def exists(user_id: str) -> bool:
    return db.session.get(Account, user_id) is not None
