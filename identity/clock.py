"""Time and randomness, injected so that tests control them."""

import secrets
from datetime import UTC
from datetime import datetime
from typing import Protocol

# Unambiguous when read aloud or typed from a phone: no 0/O, 1/I/L.
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def new_code(length: int = 8) -> str:
    """Return a short, easy-to-type code from a CSPRNG."""
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(length))


def new_token(nbytes: int = 24) -> str:
    """Return an unguessable URL-safe token, never starting with "-" (so that admins
    can pass it to commands as an argument)."""
    while (token := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return token


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, as the Matrix specification counts time."""
    return int(moment.timestamp() * 1000)
