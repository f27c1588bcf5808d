"""What we keep about people, for how long, and how it is erased (docs/privacy.md).

Expired validation sessions and long-expired invitations are purged on a schedule by
each instance's background thread (the deletes are idempotent, so several instances
purging at once is harmless), and on demand by `flask sessions purge-expired` and
`flask invites purge-expired`. `flask threepid forget` erases one address entirely.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from identity.config import Settings
from identity.storage import associations
from identity.storage import invites
from identity.storage import sessions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    session_lifetime: timedelta  # a session is refused, then deleted, after this
    invitation_retention: timedelta  # an invitation is deleted this long after its expiry
    purge_interval_seconds: float  # 0: no scheduled purge

    @classmethod
    def from_settings(cls, config: Settings) -> "Retention":
        return cls(
            session_lifetime=config.session_lifetime,
            invitation_retention=timedelta(days=config.invite_retention_days),
            purge_interval_seconds=config.purge_interval_seconds,
        )


def purge(retention: Retention, *, now: datetime) -> dict[str, int]:
    """Delete what is past its retention; return how many of each were deleted."""
    return {
        "validation sessions": sessions.delete_expired(now - retention.session_lifetime),
        "invitations": invites.delete_expired(now=now, older_than=retention.invitation_retention),
    }


def forget(medium: str, address: str) -> dict[str, int]:
    """Erase everything held about an address; return how many of each were deleted.

    Accounts are not touched: they belong to Matrix IDs, not to addresses.
    """
    return {
        "bindings": associations.delete_for_address(medium, address),
        "validation sessions": sessions.delete_for_address(medium, address),
        "invitations": invites.delete_for_address(medium, address),
    }


class Schedule:
    """Says when the next scheduled purge is due (one per process)."""

    def __init__(self, interval_seconds: float, monotonic=time.monotonic) -> None:
        self.interval = interval_seconds
        self._monotonic = monotonic
        self._next = monotonic()  # the first pass purges at once

    def is_due(self) -> bool:
        if self.interval <= 0 or self._monotonic() < self._next:
            return False
        self._next = self._monotonic() + self.interval
        return True
