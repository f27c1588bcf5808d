"""A statement of the hot reads, compiled once (storage.hot_reads, storage.libpq)."""

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any


@dataclass(frozen=True)
class Prepared:
    sql: str
    # The caller's values, by bind name → the driver's parameters: the statement's own
    # values added (a LIMIT, say), each converted by its column's type, in the order of
    # a positional paramstyle.
    arrange: Callable[[dict[str, Any]], Any]
    # (position, conversion) of each selected column its type converts; None: no column
    results: tuple[tuple[int, Any], ...] | None
    name: bytes  # of the statement prepared on a PostgreSQL connection (storage.libpq)
    # {a row as the driver gave it: the row converted}, for single-row reads (hot_reads)
    converted: dict[tuple, tuple] = field(default_factory=dict)
