"""Aware UTC datetimes on SQLite: the shortcuts of `UTCDateTime` write and read the very
text SQLAlchemy's own conversions do, and the texts sort as the instants."""

from datetime import UTC
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy import TypeDecorator
from sqlalchemy.dialects import sqlite

from identity.storage.models import UTCDateTime

DIALECT = sqlite.dialect()
OFFSETS = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# Within the years SQLite's text keeps in four digits, in any time zone.
AWARE = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS
)


class _General(TypeDecorator[datetime]):
    """UTCDateTime without its SQLite shortcuts: SQLAlchemy's own conversions."""

    impl = DateTime(timezone=True)
    cache_ok = True
    process_bind_param = UTCDateTime.process_bind_param
    process_result_value = UTCDateTime.process_result_value


# As statements take them: from the type adapted to the dialect.
BIND = UTCDateTime()._cached_bind_processor(DIALECT)
GENERAL_BIND = _General()._cached_bind_processor(DIALECT)
FAST_READ = UTCDateTime()._cached_result_processor(DIALECT, None)
GENERAL_READ = _General()._cached_result_processor(DIALECT, None)


@given(AWARE)
def test_an_aware_datetime_is_written_and_read_as_sqlalchemy_does(value):
    text = BIND(value)
    assert text == GENERAL_BIND(value)
    assert FAST_READ(text) == GENERAL_READ(text) == value.astimezone(UTC)
    assert FAST_READ(text).tzinfo is UTC


@given(AWARE, AWARE)
def test_the_texts_written_sort_as_the_instants(a, b):
    """SQLite compares the stored texts: their order must be the instants'."""
    assert (BIND(a) < BIND(b)) == (a < b)
    assert (BIND(a) == BIND(b)) == (a == b)


def test_anything_else_takes_the_general_way():
    assert BIND(None) is None and FAST_READ(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        BIND(datetime(2026, 12, 7, 9, 0))
    assert FAST_READ("2026-12-07 09:00:00") == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
