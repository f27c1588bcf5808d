"""Test doubles shared by the fixtures: a fake clock.

The real SMTP sink, free ports and server processes are in the `testing` package, shared
with the benchmarks.
"""

from datetime import UTC
from datetime import datetime
from datetime import timedelta


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> None:
        self._now += timedelta(**delta)
