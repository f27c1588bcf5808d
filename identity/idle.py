"""Connections kept idle in a list between uses, for the reads every request makes.

Taking one is a list pop and giving it back an append, atomic under the GIL: a pool's
checkout and checkin, with their locks, liveness checks and bookkeeping, cost more
than a local Redis call or a SQLite read (docs/performance.md). There are never more
connections than threads using them at once. Whoever takes a connection that fails
discards it and may drop the idle ones too (a restarted server). The idle ones are
closed when the list goes (an app dropped without disposing of its engine) or the
process ends.
"""

import contextlib
import os
import weakref
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
        weakref.finalize(self, _close_own, self._idle, close, self._pid)

    def take(self) -> C:
        """An idle connection, or a new one."""
        if self._pid != os.getpid():
            # A forked copy: its connections share sockets with the parent's. Forget
            # them without closing, nor freeing (either would end the parent's sessions).
            _INHERITED.extend(self._idle)
            self._idle.clear()
            self._pid = os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            return self._connect()

    def give(self, connection: C) -> None:
        """Keep a connection that served well for the next taker."""
        self._idle.append(connection)

    def discard(self, connection: C) -> None:
        """Close a connection that failed; it is not given back."""
        _close_each([connection], self._close)

    def close_all(self) -> None:
        _close_each(self._idle, self._close)


_INHERITED: list = []  # a forked process's copies of its parent's connections


def _close_own(connections: list, close: Callable, pid: int) -> None:
    if os.getpid() == pid:  # never a parent's, from a forked copy ending
        _close_each(connections, close)


def _close_each(connections: list, close: Callable) -> None:
    while connections:
        with contextlib.suppress(Exception):  # already broken: nothing more to release
            close(connections.pop())
