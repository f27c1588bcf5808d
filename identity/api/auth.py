"""Bearer-token authentication for the v2 endpoints."""

from flask import request

from identity import accounts
from identity.terms import current_terms


def bearer_token() -> str | None:
    # Since v1.20 of the specification, tokens travel only in the Authorization header.
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def require_user(check_terms: bool = True) -> str:
    """The user of the request's access token.

    :raises MatrixError: 401 M_UNAUTHORIZED, 403 M_TERMS_NOT_SIGNED.
    """
    return accounts.authenticate(bearer_token(), current_terms(), check_terms=check_terms)
