"""A statement of the hot reads, compiled once (storage.hot_reads, storage.libpq)."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prepared:
    sql: str
    positions: tuple[str, ...] | None  # parameter order for positional paramstyles
    defaults: dict[str, Any]  # the statement's own values (a LIMIT, say), by bind name
    processors: dict[str, Any]  # bind name → the column type's conversion
    # (position, conversion) of each selected column its type converts; None: no column
    results: tuple[tuple[int, Any], ...] | None
    name: bytes  # of the statement prepared on a PostgreSQL connection (storage.libpq)
