"""Accounts: registration through the homeserver's OpenID, access tokens, terms.

Access tokens are stored only as their SHA-256 hash: a copy of the database grants
no access.
"""

import hashlib
import re
from collections.abc import Callable
from datetime import datetime

from identity.clock import new_token
from identity.errors import InvalidParam
from identity.errors import TermsNotSigned
from identity.errors import Unauthorized
from identity.storage import accounts
from identity.terms import Terms

# A server name as the appendices define it: a host (DNS name or IP literal), optional port.
_SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,255})(:[0-9]{1,5})?$")
_USER_ID = re.compile(r"^@[^:\s]+:(.+)$")

# Asks a homeserver who an OpenID token belongs to: (server_name, token) → sub.
UserinfoFetcher = Callable[[str, str], str]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_server_name(name: str) -> bool:
    return bool(_SERVER_NAME.match(name))


def server_of(user_id: str) -> str | None:
    """The server part of a Matrix user ID, or None when it is not one."""
    match = _USER_ID.match(user_id)
    return match.group(1) if match and is_server_name(match.group(1)) else None


def register(
    openid_token: str, matrix_server_name: str, *, now: datetime, userinfo: UserinfoFetcher
) -> str:
    """Verify an OpenID token with its homeserver and return a new access token for its user.

    :raises MatrixError: M_INVALID_PARAM for a malformed server name, M_UNAUTHORIZED when
        the homeserver does not vouch for the token or names a user of another server.
    """
    if not is_server_name(matrix_server_name):
        raise InvalidParam("matrix_server_name is not a valid server name")
    user_id = userinfo(matrix_server_name, openid_token)
    if server_of(user_id) != matrix_server_name:
        raise Unauthorized("The homeserver vouched for a user of another server")
    accounts.ensure_account(user_id, now)
    token = new_token(32)
    accounts.add_token(token_hash(token), user_id, now)
    return token


def user_for(token: str) -> str | None:
    """The user an access token belongs to, or None for an unknown token."""
    return accounts.committed_user_for_token(token_hash(token))


def authenticate(
    token: str | None,
    terms: Terms,
    *,
    check_terms: bool = True,
    user_for: Callable[[str], str | None] = user_for,
) -> str:
    """Return the user an access token belongs to.

    :param user_for: looks a token up (a request may have done it already).
    :raises MatrixError: M_UNAUTHORIZED for a missing or unknown token,
        M_TERMS_NOT_SIGNED when the user has not accepted every current document.
    """
    user_id = user_for(token) if token else None
    if user_id is None:
        raise Unauthorized("Unrecognised access token")
    if (
        check_terms
        and terms.required
        and not terms.is_satisfied_by(accounts.accepted_urls(user_id))
    ):
        raise TermsNotSigned("Terms of service have not been accepted")
    return user_id


def logout(token: str) -> None:
    accounts.delete_token(token_hash(token))


def accept_terms(user_id: str, urls: list[str], terms: Terms, *, now: datetime) -> None:
    """Record the accepted URLs that belong to the current terms; others are ignored."""
    accounts.accept_urls(user_id, set(urls) & terms.urls(), now)
