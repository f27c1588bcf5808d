"""Accounts: registration through the homeserver's OpenID, access tokens, terms.

Access tokens are stored only as their SHA-256 hash: a copy of the database grants
no access.
"""

import hashlib
from collections.abc import Callable
from datetime import datetime

from identity.clock import new_token
from identity.errors import CallerNotAllowed
from identity.errors import InvalidParam
from identity.errors import TermsNotSigned
from identity.errors import Unauthorized
from identity.matrix_ids import is_server_name
from identity.matrix_ids import server_of
from identity.storage import accounts
from identity.terms import Terms

# Asks a homeserver who an OpenID token belongs to: (server_name, token) → sub.
UserinfoFetcher = Callable[[str, str], str]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register(
    openid_token: str,
    matrix_server_name: str,
    *,
    now: datetime,
    userinfo: UserinfoFetcher,
    allowed_servers: tuple[str, ...] = (),
) -> str:
    """Verify an OpenID token with its homeserver and return a new access token for its user.

    :param allowed_servers: the homeservers whose users may register; empty for any.
    :raises MatrixError: M_INVALID_PARAM for a malformed server name, 403 M_UNAUTHORIZED
        for a homeserver not in `allowed_servers` (asked nothing), 401 M_UNAUTHORIZED
        when the homeserver does not vouch for the token or names a user of another server.
    """
    if not is_server_name(matrix_server_name):
        raise InvalidParam("matrix_server_name is not a valid server name")
    if allowed_servers and matrix_server_name.lower() not in allowed_servers:
        raise CallerNotAllowed("This homeserver's users may not use this identity server")
    user_id = userinfo(matrix_server_name, openid_token)
    if server_of(user_id) != matrix_server_name:
        raise Unauthorized("The homeserver vouched for a user of another server")
    return issue_token(user_id, now=now)


def issue_token(user_id: str, *, now: datetime) -> str:
    """Create `user_id`'s account if needed and return a new access token for it.

    :raises MatrixError: M_INVALID_PARAM when `user_id` is not a Matrix user ID.
    """
    if server_of(user_id) is None:
        raise InvalidParam("Not a Matrix user ID")
    accounts.ensure_account(user_id, now)
    token = new_token(32)
    accounts.add_token(token_hash(token), user_id, now)
    return token


def check_token(token: str) -> accounts.TokenCheck | None:
    """The token's user and the current pepper (one read), None for an unknown token."""
    return accounts.check_token(token_hash(token))


def authenticate(
    token: str | None,
    terms: Terms,
    *,
    check_terms: bool = True,
    user_for: Callable[[str], str | None],
) -> str:
    """Return the user an access token belongs to.

    :param user_for: looks a token up (`check_token`, which a request may have done
        already), None for an unknown token.
    :raises MatrixError: M_UNAUTHORIZED for a missing or unknown token,
        M_TERMS_NOT_SIGNED when the user has not accepted every current document.
    """
    user_id = user_for(token) if token else None
    if user_id is None:
        raise Unauthorized("Unrecognised access token")
    if check_terms and not has_accepted_terms(user_id, terms):
        raise TermsNotSigned("Terms of service have not been accepted")
    return user_id


def has_accepted_terms(user_id: str, terms: Terms) -> bool:
    """Whether the user accepted every current document (always, without terms)."""
    return not terms.required or terms.is_satisfied_by(accounts.accepted_urls(user_id))


def logout(token: str) -> None:
    accounts.delete_token(token_hash(token))


def accept_terms(user_id: str, urls: list[str], terms: Terms, *, now: datetime) -> None:
    """Record the accepted URLs that belong to the current terms; others are ignored."""
    accounts.accept_urls(user_id, set(urls) & terms.urls(), now)
