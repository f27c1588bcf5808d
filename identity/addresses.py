"""Email addresses: normalised once on input, redacted in logs."""

import functools
import re

from email_validator import EmailNotValidError
from email_validator import validate_email

from identity.errors import InvalidEmail

MAX_ADDRESS_LENGTH = 320
# Limits email_validator applies, repeated for the fast path below.
_MAX_LOCAL_LENGTH = 64
_MAX_NORMALISED_LENGTH = 254
# An RFC 5322 dot-atom of ASCII characters: a local part email_validator always accepts.
_ATEXT = r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+"
_ASCII_LOCAL_PART = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")


def normalise_email(address: str) -> str:
    """Return the canonical, case-folded form of an email address.

    Addresses are matched case-insensitively everywhere (Sydent had to casefold its
    database after the fact). Internationalised domains are kept as punycode (ASCII),
    so the Unicode and punycode spellings of one address are the same address.

    :raises MatrixError: M_INVALID_EMAIL when the address is not a valid email address.
    """
    address = address.strip()
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidEmail("Invalid email address")
    # Fast path for the usual address (plain ASCII local part): only its domain needs
    # email_validator's costly checks, and there are few domains, so they are memoised.
    # The result is the same as the full validation's (tests/test_addresses.py).
    local, at, domain = address.rpartition("@")
    if at and len(local) <= _MAX_LOCAL_LENGTH and _ASCII_LOCAL_PART.fullmatch(local):
        normalised = f"{local}@{_ascii_domain(domain)}".casefold()
        if len(normalised) <= _MAX_NORMALISED_LENGTH:
            return normalised
    return _validated(address).casefold()


def _validated(address: str) -> str:
    try:
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        raise InvalidEmail("Invalid email address") from None
    return f"{valid.local_part}@{valid.ascii_domain}"


@functools.lru_cache(maxsize=4096)
def _ascii_domain(domain: str) -> str:
    """The ASCII form of a valid email domain (invalid ones raise, and are not memoised)."""
    return _validated(f"postmaster@{domain}").rpartition("@")[2]


def lookup_form(address: str) -> str:
    """The form in which lookups hash and compare an address: trimmed and case-folded."""
    return address.strip().casefold()


def redact(address: str) -> str:
    """A log-safe form of an address: its first letter and its domain, `a…@example.fr`."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}…@{domain}" if local else "…"
