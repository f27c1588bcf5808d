"""Who may call: bearer tokens for the v2 endpoints, trusted callers for the internal API."""

import functools
import hmac
import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from flask import request
from sqlalchemy.exc import DBAPIError

from identity import accounts
from identity import outages
from identity.api.http import query_arg
from identity.api.http import request_globals
from identity.api.http import settings
from identity.api.http import this_request
from identity.config import Network
from identity.config import Settings
from identity.errors import Forbidden
from identity.services import services

logger = logging.getLogger(__name__)


def bearer_token(*, allow_query: bool = False) -> str | None:
    """The request's access token, from the Authorization header.

    :param allow_query: also take `access_token` from the query string, which the
        specification no longer allows but Synapse still sends on /hash_details
        (access logs never show query strings).
    """
    environ = this_request().environ
    bearer, token = _header_token(environ)
    if bearer or not allow_query:
        return token
    return _query_token(environ)


def _header_token(environ: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether the Authorization header names the Bearer scheme, and its token.

    The header as the environ holds it: what `request.headers` would read, without
    building the headers view on every request."""
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer":
        return True, token.strip() or None
    return False, None


def _query_token(environ: dict[str, Any]) -> str | None:
    if not _may_carry_token(environ.get("QUERY_STRING", "")):
        return None
    return query_arg(this_request().args, "access_token") or None


def _may_carry_token(query: str) -> bool:
    """Whether a query string may name access_token, spelled out or percent-encoded:
    most requests carry none, and are spared parsing theirs here."""
    return "access_token" in query or "%" in query


def require_user(check_terms: bool = True, *, allow_query_token: bool = False) -> str:
    """The user of the request's access token.

    :raises MatrixError: 401 M_UNAUTHORIZED, 403 M_TERMS_NOT_SIGNED, 429 M_LIMIT_EXCEEDED.
    """
    token = bearer_token(allow_query=allow_query_token)
    current = services()
    user_id = accounts.authenticate(
        token, current.terms, check_terms=check_terms, user_for=_known_user
    )
    if request_globals().get("identity_counted_user") != user_id:  # not counted yet
        current.limits.check("per_user", user_id)
    return user_id


def limit_request(environ: dict[str, Any]) -> None:
    """Count a request against its user once its token is valid, else against its IP.

    A made-up token (`Authorization: Bearer junk`, `?access_token=junk`) counts against
    the IP like no token at all, on every endpoint, those that never read the token
    included. Trusted callers (`is_trusted_caller`) are not held to the public limits.

    :param environ: the request's WSGI environ.
    :raises MatrixError: 429 M_LIMIT_EXCEEDED.
    """
    current = services()  # looked up once: this runs on every request
    # Read from the environ (`bearer_token`'s steps, `request.remote_addr`'s value).
    remote = environ.get("REMOTE_ADDR")
    bearer, token = _header_token(environ)
    if _is_trusted(token, current.settings, remote or ""):
        return
    if not bearer:
        token = _query_token(environ)
    try:
        user_id = _known_user(token) if token else None
    except DBAPIError as e:
        # The database is out: count the request against its IP. An endpoint that
        # needs the user fails on its own; one that does not (status, terms) answers.
        if (dependency := outages.unavailable_dependency(e)) is None:
            raise
        outages.warn(dependency, e, effect="tokens counted as unknown by the rate limits")
        user_id = None
    if user_id is None:
        current.limits.check("per_ip", remote or "unknown")
        return
    current.limits.check("per_user", user_id)
    request_globals().identity_counted_user = user_id


def _known_user(token: str) -> str | None:
    """The user of `token`, looked up once per request (with the current pepper)."""
    state = request_globals()
    known = state.setdefault("identity_known_tokens", {})
    if token not in known:
        known[token] = accounts.check_token(token)
    check = known[token]
    if check is None:
        return None
    state.identity_pepper = check.pepper
    return check.user_id


def request_pepper() -> tuple[str, int] | None:
    """The current pepper and its slot, when the request's token check read them."""
    return request_globals().get("identity_pepper")


def is_trusted_caller() -> bool:
    """Whether the request comes from a homeserver or the authentication service.

    They call from INTERNAL_API_TRUSTED_NETWORKS, or present INTERNAL_API_SECRET as
    their bearer token (in the Authorization header, never the query string).
    """
    return _is_trusted(bearer_token(), settings(), request.remote_addr or "")


def _is_trusted(token: str | None, config: Settings, remote: str) -> bool:
    secret = config.internal_api_secret
    if secret and token and hmac.compare_digest(token.encode(), secret.encode()):
        return True
    networks = config.internal_api_trusted_networks
    return bool(networks) and _address_in(remote, networks)


def require_internal_caller() -> None:
    """Let homeservers and the authentication service through, nobody else.

    A caller is let in from INTERNAL_API_TRUSTED_NETWORKS or with INTERNAL_API_SECRET
    as its bearer token. With neither configured the internal API is closed.

    :raises MatrixError: 403 M_FORBIDDEN.
    """
    if is_trusted_caller():
        return
    config = settings()
    if not config.internal_api_secret and not config.internal_api_trusted_networks:
        raise Forbidden(
            "The internal API is not enabled on this server: its operator sets"
            " INTERNAL_API_TRUSTED_NETWORKS or INTERNAL_API_SECRET"
        )
    raise Forbidden(
        "The internal API is for homeservers only: call from INTERNAL_API_TRUSTED_NETWORKS,"
        " or send INTERNAL_API_SECRET as a bearer token"
    )


def is_from(networks: Iterable[Network]) -> bool:
    """Whether the request comes from one of `networks`."""
    return _address_in(request.remote_addr or "", tuple(networks))


@functools.lru_cache(maxsize=4096)
def _address_in(address: str, networks: tuple[Network, ...]) -> bool:
    """Worked out once per caller: the few busy ones (homeservers, the authentication
    service) ask on every request."""
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped:
        client = client.ipv4_mapped
    return any(client in network for network in networks)
