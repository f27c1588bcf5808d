"""Email addresses: normalised once on input, redacted in logs."""

from email_validator import EmailNotValidError
from email_validator import validate_email

from identity.errors import InvalidEmail

MAX_ADDRESS_LENGTH = 320


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
    try:
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        raise InvalidEmail("Invalid email address") from None
    return f"{valid.local_part}@{valid.ascii_domain}".casefold()


def lookup_form(address: str) -> str:
    """The form in which lookups hash and compare an address: trimmed and case-folded."""
    return address.strip().casefold()


def redact(address: str) -> str:
    """A log-safe form of an address: its first letter and its domain, `a…@example.fr`."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}…@{domain}" if local else "…"
