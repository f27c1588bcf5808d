"""Email addresses: normalised once on input, redacted in logs.

An address read from a request has two forms:

- its *mailbox*: the address as its owner wrote it, the domain in its lower-case ASCII
  (IDNA) form. Mail goes there: a mailbox's local part belongs to the owner's mail
  server, which may tell ``Straße`` from ``strasse`` (RFC 5321 §2.4).
- its *key*: the mailbox case-folded. Addresses are stored, matched, hashed for lookups
  and bound under their key, so that every case of an address is the same address
  (Sydent had to casefold its database after the fact).

The key is always ``mailbox.casefold()``.
"""

import contextlib
import functools
import re
import unicodedata
from dataclasses import dataclass

import email_validator
import idna
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
# The IANA registry of special-use domain names (RFC 6761): email_validator's list, which
# it refuses outright, and the documentation names it leaves to DNS checks.
SPECIAL_USE_DOMAINS = (
    *email_validator.SPECIAL_USE_DOMAIN_NAMES,
    "example",
    "example.com",
    "example.net",
    "example.org",
)


@dataclass(frozen=True)
class Email:
    """An email address read from a request (see the module's docstring)."""

    mailbox: str

    @property
    def key(self) -> str:
        return self.mailbox.casefold()


def parse_email(address: str, *, refuse_special_use: bool = False) -> Email:
    """Validate an email address; return its mailbox and key.

    Any syntactically valid address is accepted, as Sydent accepts it, including
    addresses at special-use domains (``.test``, ``.localhost``, ``.invalid``, …) that
    staging networks and test suites use, and at single-label domains.

    :param refuse_special_use: refuse special-use domains (SPECIAL_USE_DOMAINS) and
        domains that cannot be reached on the Internet (no dot, no letter in the TLD),
        for deployments that only mail real addresses (REFUSE_SPECIAL_USE_DOMAINS).
    :raises MatrixError: M_INVALID_EMAIL when the address is not a valid email address.
    """
    return Email(_mailbox(address, refuse_special_use))


def normalise_email(address: str, *, refuse_special_use: bool = False) -> str:
    """Return the key of an email address: the form it is stored and matched under.

    :raises MatrixError: M_INVALID_EMAIL when the address is not a valid email address.
    """
    return _mailbox(address, refuse_special_use).casefold()  # Email.key, without the Email


def _mailbox(address: str, refuse_special_use: bool) -> str:
    """The mailbox of a valid address (see `parse_email`)."""
    address = address.strip()
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidEmail("Invalid email address")
    # Fast path for the usual address (plain ASCII local part): only its domain needs
    # email_validator's costly checks, and there are few domains, so they are memoised.
    # The result is the same as the full validation's (tests/test_addresses.py).
    local, at, domain = address.rpartition("@")
    if at and len(local) <= _MAX_LOCAL_LENGTH and _ASCII_LOCAL_PART.fullmatch(local):
        mailbox = f"{local}@{_domain_forms(domain, refuse_special_use)[0]}"
        if len(mailbox) <= _MAX_NORMALISED_LENGTH:
            return mailbox
    return _validated(address, refuse_special_use)[0]


def _validated(address: str, refuse_special_use: bool) -> tuple[str, str]:
    """The mailbox of a full validation, and the Unicode form of its domain."""
    if refuse_special_use:
        valid = _validate(address, globally_deliverable=True)
        if _special_use_suffix(valid.ascii_domain):
            raise InvalidEmail("Invalid email address: the domain is a special-use name")
        return f"{valid.local_part}@{valid.ascii_domain}", valid.domain
    # email_validator refuses its special-use names whatever its options say (only
    # `.test` can be let through). Rather than change its module-level list, which every
    # app in the process shares, we validate with the special-use suffix replaced by
    # plain letters of the same length, then put it back: each check sees the same
    # lengths and the same characters' classes, and suffixes are ASCII letters.
    local, at, domain = address.rpartition("@")
    suffix = ""
    if at:
        try:
            remapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        except (idna.IDNAError, ValueError):
            remapped = ""  # email_validator says what is wrong with it below
        suffix = _special_use_suffix(remapped)
        if suffix:
            address = f"{local}@{remapped[: -len(suffix)]}{_placeholder(suffix)}"
    valid = _validate(address, globally_deliverable=False)
    ascii_domain, unicode_domain = valid.ascii_domain, valid.domain
    if suffix:
        ascii_domain = ascii_domain[: -len(suffix)] + suffix
        unicode_domain = unicode_domain[: -len(suffix)] + suffix
    return f"{valid.local_part}@{ascii_domain}", unicode_domain


def _validate(address: str, *, globally_deliverable: bool) -> email_validator.ValidatedEmail:
    try:
        return validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=True,
            globally_deliverable=globally_deliverable,
        )
    except EmailNotValidError:
        raise InvalidEmail("Invalid email address") from None


def _special_use_suffix(domain: str) -> str:
    """The special-use name `domain` is or ends with, or ''."""
    for name in SPECIAL_USE_DOMAINS:
        if domain == name or domain.endswith("." + name):
            return name
    return ""


def _placeholder(suffix: str) -> str:
    # "aaaa" is no special-use name, and has the suffix's length and label structure.
    return re.sub(r"[^.]", "a", suffix)


@functools.lru_cache(maxsize=4096)
def _domain_forms(domain: str, refuse_special_use: bool = False) -> tuple[str, str]:
    """The ASCII and Unicode forms of a valid email domain (invalid ones raise, and
    are not memoised)."""
    # The shortest local part, so that the address's length limit refuses no domain
    # that some address could use.
    mailbox, unicode_domain = _validated(f"a@{domain}", refuse_special_use)
    return mailbox.rpartition("@")[2], unicode_domain


def lookup_form(address: str) -> str:
    """The key under which lookups search for an address, whatever its spelling.

    Like the key of `parse_email`, but never refuses: what is not a valid address is
    only trimmed and case-folded, and then matches nothing. An internationalised domain
    may be written in Unicode or in punycode.
    """
    address = address.strip()
    if address.isascii():
        return address.casefold()
    local, at, domain = address.rpartition("@")
    local = unicodedata.normalize("NFC", local)
    if at and not domain.isascii():
        with contextlib.suppress(InvalidEmail):  # then it matches nothing
            domain = _domain_forms(domain)[0]
    return f"{local}{at}{domain}".casefold()


def unicode_spelling(key: str) -> str | None:
    """The key of an address with its domain in Unicode, when the domain is
    internationalised (``jean@exämple.fr`` for ``jean@xn--exmple-cua.fr``), else None.

    v2 lookup clients hash the address as the user typed it; bindings keep the hash of
    this spelling too, so that a lookup finds them either way.
    """
    local, _, domain = key.rpartition("@")
    if "xn--" not in domain:
        return None
    try:
        unicode_domain = _domain_forms(domain)[1]
    except InvalidEmail:
        return None
    # Not case-folded again: IDNA keeps ß in a domain, and casefold() would make it ss.
    return f"{local}@{unicode_domain}" if unicode_domain != domain else None


def redact(address: str) -> str:
    """A log-safe form of an address: its first letter and its domain, `a…@example.fr`."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}…@{domain}" if local else "…"
