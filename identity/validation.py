"""Email validation sessions: codes sent by mail, send attempts, expiry.

Sessions are keyed by (address, client_secret) and expire a fixed time after their
last change. Codes are short, come from a CSPRNG, are compared in constant time and
forgive the spaces and dashes people type.
"""

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from urllib.parse import urlsplit

from werkzeug.urls import iri_to_uri

from identity.addresses import parse_email
from identity.clock import new_code
from identity.clock import new_token
from identity.errors import InvalidParam
from identity.errors import NoValidSession
from identity.errors import SessionExpired
from identity.errors import SessionNotValidated
from identity.errors import TokenIncorrect
from identity.storage import sessions
from identity.storage.models import ValidationSession

MEDIUM = "email"
# The specification's grammar for client secrets.
_CLIENT_SECRET = re.compile(r"^[0-9a-zA-Z.=_-]{1,255}$")
_CODE_SEPARATORS = re.compile(r"[\s-]+")
# Browsers cope with longer links, but a link mailed and redirected to needs no more.
NEXT_LINK_MAX_LENGTH = 2048
# Whitespace, C0 and C1 controls, DEL, Unicode line and paragraph separators, backslash.
_NEXT_LINK_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\\]")

# Sends the code: (session, code formatted for people) → None; raises on failure.
CodeSender = Callable[[ValidationSession, str], None]


@dataclass(frozen=True)
class Policy:
    lifetime: timedelta
    max_attempts: int
    next_link_hosts: tuple[str, ...] | None
    refuse_special_use_domains: bool = False


def request_code(
    email: str,
    client_secret: str,
    send_attempt: int,
    next_link: str | None,
    *,
    brand: str | None,
    now: datetime,
    policy: Policy,
    send: CodeSender,
) -> ValidationSession:
    """Start or continue a session for `email` and mail its code when asked to.

    A repeat with a `send_attempt` no higher than the last one returns the same
    session and sends nothing, as the specification asks, so that retried requests
    do not flood the inbox.

    :raises MatrixError: M_INVALID_PARAM (client_secret, next_link), M_INVALID_EMAIL,
        M_EMAIL_SEND_ERROR.
    """
    check_client_secret(client_secret)
    written = parse_email(email, refuse_special_use=policy.refuse_special_use_domains)
    address = written.key
    if next_link is not None:
        check_next_link(next_link, policy.next_link_hosts)
    session = sessions.find(MEDIUM, address, client_secret)
    if session is not None and is_expired(session, now, policy.lifetime):
        sessions.remove_expired(session, cutoff=now - policy.lifetime)
        session = None
    if session is None:
        # Identical requests may arrive at once: one inserts, the others get its session.
        session, created = sessions.create_or_get(
            ValidationSession(
                sid=new_token(18),
                medium=MEDIUM,
                address=address,
                mailbox=written.mailbox,
                client_secret=client_secret,
                send_attempt=send_attempt,
                token=new_code(),
                failed_attempts=0,
                next_link=next_link,
                brand=brand,
                created_at=now,
                updated_at=now,
            )
        )
        if created:
            send(session, format_code(session.token))
            return session
    if send_attempt <= session.send_attempt:
        return session
    # Of several requests carrying this new attempt, only the one that claims it mails.
    if sessions.claim_send_attempt(
        session, send_attempt, next_link=next_link, mailbox=written.mailbox, brand=brand, now=now
    ):
        send(session, format_code(session.token))
    return session


def submit_token(
    sid: str, client_secret: str, token: str, *, now: datetime, policy: Policy
) -> ValidationSession:
    """Validate a session with the code its address received.

    A wrong code counts against the session; past `max_attempts` it is closed, and a
    right code is refused too.

    :raises MatrixError: M_NO_VALID_SESSION, M_SESSION_EXPIRED, M_TOKEN_INCORRECT.
    """
    session = sessions.get(sid, client_secret)
    if session is None or session.failed_attempts >= policy.max_attempts:
        raise NoValidSession("No valid session was found matching that sid and client secret")
    if is_expired(session, now, policy.lifetime):
        raise SessionExpired("This validation session has expired: request a new code")
    # Count the check in the database before comparing: guesses sent at once each need
    # a slot of their own, so no more than max_attempts codes are ever compared.
    if not sessions.claim_code_check(session, policy.max_attempts):
        raise NoValidSession("No valid session was found matching that sid and client secret")
    if not codes_match(token, session.token):
        raise TokenIncorrect("The code is incorrect")
    sessions.mark_validated(session, now)
    return session


def get_validated_session(
    sid: str, client_secret: str, *, now: datetime, lifetime: timedelta
) -> ValidationSession:
    """Return the session if it exists, is alive and has been validated.

    :raises MatrixError: M_NO_VALID_SESSION, M_SESSION_EXPIRED, M_SESSION_NOT_VALIDATED.
    """
    session = sessions.get(sid, client_secret)
    if session is None:
        raise NoValidSession("No valid session was found matching that sid and client secret")
    if is_expired(session, now, lifetime):
        raise SessionExpired("This validation session has expired")
    validated_at(session)
    return session


def validated_at(session: ValidationSession) -> datetime:
    """When the session was validated.

    :raises MatrixError: M_SESSION_NOT_VALIDATED when it has not been.
    """
    if session.validated_at is None:
        raise SessionNotValidated("This validation session has not been validated yet")
    return session.validated_at


def purge_expired(*, now: datetime, lifetime: timedelta) -> int:
    """Delete every session whose last change is older than `lifetime`."""
    return sessions.delete_expired(now - lifetime)


def is_expired(session: ValidationSession, now: datetime, lifetime: timedelta) -> bool:
    return session.updated_at + lifetime <= now


def check_client_secret(client_secret: str) -> None:
    if not _CLIENT_SECRET.match(client_secret):
        raise InvalidParam("Invalid client_secret: 1 to 255 characters among [0-9a-zA-Z.=_-]")


def check_next_link(next_link: str, allowed_hosts: tuple[str, ...] | None) -> None:
    """Accept only http(s) links the redirect can send, to hosts on the allowlist when there is one.

    A validation link must never become a `javascript:` or `file:` redirect, nor fail
    only once the user has clicked it: the link is parsed here as the redirect will
    parse it (Werkzeug's ``iri_to_uri``). Control characters and spaces (header
    injection), backslashes and user info (browsers and ``urlsplit`` disagree on the
    host of ``https://a\\@b/``), bad ports and overlong links are refused.

    :raises MatrixError: M_INVALID_PARAM.
    """
    if len(next_link) > NEXT_LINK_MAX_LENGTH:
        raise InvalidParam(f"next_link is longer than {NEXT_LINK_MAX_LENGTH} characters")
    if _NEXT_LINK_FORBIDDEN.search(next_link):
        raise InvalidParam("next_link holds spaces, control characters or backslashes")
    try:
        parts = urlsplit(next_link)
        port = parts.port
        iri_to_uri(next_link)
    except ValueError:  # bad port, bad IPv6 literal, host that IDNA cannot encode
        raise InvalidParam("next_link is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParam("next_link must be an http or https URL")
    if port == 0 or "@" in parts.netloc:
        raise InvalidParam("next_link is not a valid URL")
    if allowed_hosts is not None and parts.hostname.lower() not in allowed_hosts:
        raise InvalidParam("next_link points to a host that is not allowed")


def redirect_for(session: ValidationSession, allowed_hosts: tuple[str, ...] | None) -> str | None:
    """Where to send the user once their session is validated, if anywhere.

    A link stored before today's rules (or the allowlist) changed is dropped rather than
    followed: the user then sees the result page.
    """
    if session.next_link is None:
        return None
    try:
        check_next_link(session.next_link, allowed_hosts)
    except InvalidParam:
        return None
    return session.next_link


def codes_match(typed: str, expected: str) -> bool:
    typed = _CODE_SEPARATORS.sub("", typed).upper()
    return hmac.compare_digest(typed.encode(), expected.upper().encode())


def format_code(code: str) -> str:
    """Group a code in fours (``ABCD-EFGH``) so that people read and type it easily."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))
