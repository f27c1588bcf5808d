"""/.well-known/security.txt (RFC 9116): where to report a vulnerability, and until when
that information holds."""

from datetime import UTC
from datetime import datetime

PATH = "/.well-known/security.txt"
# The languages a report may be written in: those of the service's pages.
PREFERRED_LANGUAGES = "fr, en"


def render(
    *, contacts: tuple[str, ...], expires: datetime, policy: str | None, public_base_url: str
) -> str:
    """The file's text: one field a line (RFC 9116, section 2.5).

    :param contacts: URIs (mailto:, https://, tel:), most preferred first (section 2.5.3).
    :param expires: when the file goes stale; written in UTC (section 2.5.5).
    :param public_base_url: gives the Canonical field, where the file is served.
    """
    lines = [f"Contact: {contact}" for contact in contacts]
    lines.append(f"Expires: {expires.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}")
    if policy:
        lines.append(f"Policy: {policy}")
    lines.append(f"Preferred-Languages: {PREFERRED_LANGUAGES}")
    lines.append(f"Canonical: {public_base_url}{PATH}")
    return "\n".join(lines) + "\n"
