"""What a statement's result says, typed."""

from typing import Any
from typing import cast

from sqlalchemy import CursorResult
from sqlalchemy import Result


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched (its result is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount
