"""Dates as people read them in mails and pages, in the current language (Babel's CLDR data).

Never the server's locale settings: the language is the page's or the mail version's.
"""

from datetime import datetime
from zoneinfo import ZoneInfo

from flask_babel import format_date
from flask_babel import gettext

# Dates are shown in metropolitan France's time: that is where nearly every reader is.
PARIS = ZoneInfo("Europe/Paris")


def long_date(moment: datetime) -> str:
    """``27 décembre 2026`` / ``27 December 2026``, in the current language.

    The patterns are CLDR date patterns in the catalogue, so that each language writes
    its own; French writes the first of the month as an ordinal (``1er janvier``).
    """
    local = moment.astimezone(PARIS).date()
    pattern = gettext("'1er' MMMM y") if local.day == 1 else gettext("d MMMM y")
    return format_date(local, pattern)
