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
import tempfile
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
        strict: bool = True,
        last_good: str | None = None,
    ) -> None:
        """Load `path` now.

        :param strict: refuse an invalid file (a service must not start without rules).
            Otherwise start on the last good rules, or without rules until the file is
            fixed: a worker replacing another (gunicorn recycles them) must not die of
            an edit the running ones refused, nor an admin's command of the file it
            may be about to check.
        :param last_good: where a copy of the last valid version is kept, for that.
        :raises RoutingError: when `strict` and the file is invalid.
        """
        self.path = path
        self.check_seconds = check_seconds
        self.last_good = last_good
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._signature = _signature(path)
        self._table: RoutingTable | None = None
        self._error: str | None = None
        try:
            self._table = self._load()
        except RoutingError as e:
            if strict:
                raise
            self._error = _redacted(e)
            self._table = self._load_last_good()
        self._loaded_at = time.time()
        self._next_check = monotonic() + check_seconds
        self._forced = False

    @property
    def error(self) -> str | None:
        """Why the file on disk is not the one being served, if it is not."""
        return self._error

    def has_rules(self) -> bool:
        return self._table is not None

    def table(self) -> RoutingTable:
        """The table to answer with, reloaded first when the file has changed.

        :raises RoutingError: when no valid version of the file was ever loaded.
        """
        if self._forced or self._monotonic() >= self._next_check:
            self.reload()
        if self._table is None:
            raise RoutingError(self.path, [self._error or "not loaded"])
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
                table = self._load()
            except RoutingError as e:
                self._error = _redacted(e)
                logger.error(
                    "Refusing the edited %s, %s: %s",
                    self.path,
                    "keeping the last good rules" if self._table else "no rules loaded yet",
                    self._error,
                )
                return False
            self._table, self._loaded_at, self._error = table, time.time(), None
            logger.info("Reloaded %s: %s rules", self.path, table.rule_count())
            return True
        finally:
            self._lock.release()

    def _load(self) -> RoutingTable:
        """Load the file, keeping a copy of it as the last good version."""
        table = load_file(self.path)
        if self.last_good:
            _keep_copy(self.path, self.last_good)
        return table

    def _load_last_good(self) -> RoutingTable | None:
        if not self.last_good or not os.path.exists(self.last_good):
            return None
        try:
            return load_file(self.last_good)
        except RoutingError:
            return None

    def status(self) -> Status:
        """What is served and whether the file on disk could be loaded (looked at now)."""
        try:
            table = self.table()
        except RoutingError:
            table = None
        return Status(
            path=self.path,
            rules=table.rule_count() if table else 0,
            platforms=len(table.platforms) if table else 0,
            loaded_at=self._loaded_at,
            error=self._error,
        )


def _redacted(error: RoutingError) -> str:
    # Problems may quote the file's single-address rules: not in logs.
    return _EMAIL.sub(lambda m: redact(m.group()), "; ".join(error.problems))


def _keep_copy(path: str, copy: str) -> None:
    """Copy `path` to `copy` unless it already holds the same text (atomically: other
    processes may read it or write the same)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if os.path.exists(copy):
            with open(copy, "rb") as f:
                if f.read() == data:
                    return
        directory = os.path.dirname(os.path.abspath(copy))
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".domains-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, copy)
    except OSError as e:  # a read-only instance folder: no fallback, still serving
        logger.debug("Could not keep a copy of %s in %s: %s", path, copy, e.strerror)


def _signature(path: str) -> tuple[int, int, int] | None:
    """(mtime, size, inode): what changes when the file is saved, in place or by
    renaming a new file over it."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
