"""Dates as people read them in mails and pages, in French and in English.

Locale-independent on purpose: the server's locale settings must not change a mail.
"""

from datetime import datetime
from zoneinfo import ZoneInfo

# Dates are shown in metropolitan France's time: that is where nearly every reader is.
PARIS = ZoneInfo("Europe/Paris")
MONTHS = {
    "fr": (
        "janvier", "février", "mars", "avril", "mai", "juin",
        "juillet", "août", "septembre", "octobre", "novembre", "décembre",
    ),
    "en": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
}  # fmt: skip


def long_date(moment: datetime, lang: str) -> str:
    """``27 décembre 2026`` / ``27 December 2026``."""
    local = moment.astimezone(PARIS)
    day = "1er" if lang == "fr" and local.day == 1 else str(local.day)
    return f"{day} {MONTHS[lang][local.month - 1]} {local.year}"
