"""The live routing table of a process, reloaded when domains.yaml changes.

Each request asks for the current table; at most once per `check_seconds` that costs
one stat() of the file. A changed file is parsed completely before the new table
replaces the old one in a single assignment, so no request ever sees a half-loaded
file. An invalid edit is refused: the last good table keeps serving and the error is
kept for /health and logged. SIGHUP forces a reload on the next request.
"""

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from identity.addresses import redact
from identity.routing.schema import RoutingError
from identity.routing.schema import load_file
from identity.routing.table import RoutingTable

logger = logging.getLogger(__name__)

# A file modified this recently may still be being written (an editor that does not
# save atomically): wait for it to settle rather than load a truncated version.
SETTLE_SECONDS = 0.3
_EMAIL = re.compile(r"[^\s'\"]+@[^\s'\":;,()]+")


@dataclass(frozen=True)
class Status:
    path: str
    rules: int
    platforms: int
    loaded_at: float  # Unix time of the table being served
    error: str | None  # why the file on disk is not the one being served

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "rules": self.rules,
            "platforms": self.platforms,
            "loaded_at": int(self.loaded_at),
            "ok": self.error is None,
            **({"error": self.error} if self.error else {}),
        }


class RoutingSource:
    def __init__(
        self,
        path: str,
        *,
        check_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load `path` now. :raises RoutingError: a service must not start without rules."""
        self.path = path
        self.check_seconds = check_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._signature = _signature(path)
        self._table = load_file(path)
        self._loaded_at = time.time()
        self._error: str | None = None
        self._next_check = monotonic() + check_seconds
        self._forced = False

    def table(self) -> RoutingTable:
        """The table to answer with, reloaded first when the file has changed."""
        if self._forced or self._monotonic() >= self._next_check:
            self.reload()
        return self._table

    def force_reload(self) -> None:
        """Reload on the next request (safe to call from a signal handler)."""
        self._forced = True

    def reload(self) -> bool:
        """Reload if the file changed (or a reload was forced); return whether it did."""
        if not self._lock.acquire(blocking=False):
            return False  # another thread is reloading: keep serving the current table
        try:
            self._next_check = self._monotonic() + self.check_seconds
            signature = _signature(self.path)
            if signature == self._signature and not self._forced:
                return False
            if signature is not None and time.time() - signature[0] / 1e9 < SETTLE_SECONDS:
                self._next_check = self._monotonic() + SETTLE_SECONDS
                return False
            self._forced = False
            self._signature = signature
            try:
                table = load_file(self.path)
            except RoutingError as e:
                # Problems may quote the file's single-address rules: not in logs.
                self._error = _EMAIL.sub(lambda m: redact(m.group()), "; ".join(e.problems))
                logger.error(
                    "Refusing the edited %s, keeping the last good rules: %s",
                    self.path,
                    self._error,
                )
                return False
            self._table, self._loaded_at, self._error = table, time.time(), None
            logger.info("Reloaded %s: %s rules", self.path, table.rule_count())
            return True
        finally:
            self._lock.release()

    def status(self) -> Status:
        """What is served and whether the file on disk could be loaded (looked at now)."""
        self.table()
        return Status(
            path=self.path,
            rules=self._table.rule_count(),
            platforms=len(self._table.platforms),
            loaded_at=self._loaded_at,
            error=self._error,
        )


def _signature(path: str) -> tuple[int, int, int] | None:
    """(mtime, size, inode): what changes when the file is saved, in place or by
    renaming a new file over it."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
