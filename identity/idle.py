"""Connections kept idle in a list between uses, for the reads every request makes.

Taking one is a list pop and giving it back an append, atomic under the GIL: a pool's
checkout and checkin, with their locks, liveness checks and bookkeeping, cost more
than a local Redis call or a SQLite read (docs/performance.md). There are never more
connections than threads using them at once. Whoever takes a connection that fails
discards it and may drop the idle ones too (a restarted server).
"""

import contextlib
import os
from collections.abc import Callable
from typing import Generic
from typing import TypeVar

C = TypeVar("C")


class IdleConnections(Generic[C]):
    def __init__(self, connect: Callable[[], C], close: Callable[[C], object]) -> None:
        self._connect = connect
        self._close = close
        self._idle: list[C] = []
        self._pid = os.getpid()

    def take(self) -> C:
        """An idle connection, or a new one."""
        if self._pid != os.getpid():
            # A forked copy: its connections share sockets with the parent's. Forget
            # them without closing (closing would end the parent's sessions too).
            self._idle, self._pid = [], os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            return self._connect()

    def give(self, connection: C) -> None:
        """Keep a connection that served well for the next taker."""
        self._idle.append(connection)

    def discard(self, connection: C) -> None:
        """Close a connection that failed; it is not given back."""
        with contextlib.suppress(Exception):  # already broken: nothing more to release
            self._close(connection)

    def close_all(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            self.discard(connection)
