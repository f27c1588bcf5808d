"""gunicorn's threaded worker, giving a thread only to a request whose head has arrived.

gunicorn's `gthread` hands a connection to a thread as soon as it is readable, and the
thread then waits, blocking, for the rest of the request line and headers. A few
hundred clients that send half a request head (slow networks, or on purpose) would hold
every thread, and the service would stop answering. Here the worker's main loop reads
each request head without blocking, beside the other connections it watches, and
queues the connection for a thread once the blank line that ends the head is in (or
the head outgrows `MAX_HEAD_BYTES`, which the parser then refuses). A connection whose
head does not arrive within `HEAD_TIMEOUT_SECONDS` is closed.

Production still belongs behind a buffering reverse proxy (docs/operations.md): a body
sent slowly holds a thread here, as it would in any threaded server.

Over TLS (gunicorn's `certfile`) the bytes on the socket are not the head: the worker
then behaves as gthread does.
"""

import errno
import selectors
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn
from gunicorn.workers.gthread import ThreadWorker

HEAD_TIMEOUT_SECONDS = 10.0
# Beyond gunicorn's own limits (request line and 100 header fields of 8,190 bytes): a
# head this long is handed over for the parser to refuse.
MAX_HEAD_BYTES = 64 * 1024
_END_OF_HEAD = b"\r\n\r\n"


class HeadFirstWorker(ThreadWorker):
    """`gthread`, with request heads read in the main loop (see the module's docstring)."""

    def accept(self, listener: Any) -> None:
        if self.cfg.is_ssl:
            return super().accept(listener)
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        # Non-blocking from here: the main loop reads the head.
        self._await_head(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection has more: its next head is awaited the same way."""
        if self.cfg.is_ssl:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def handle(self, conn: Any) -> Any:
        head = getattr(conn, "head", None)
        if head:
            conn.head = None
            conn.sock.setblocking(True)
            conn.init()  # the parser, for a new connection
            conn.parser.unreader.unread(bytes(head))
        return super().handle(conn)

    def _await_head(self, conn: Any) -> None:
        conn.head = bytearray()
        conn.timeout = time.monotonic() + HEAD_TIMEOUT_SECONDS
        # gunicorn closes those past their `timeout` (murder_pending), in this order.
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: Any, client: Any) -> None:
        try:
            data = client.recv(8192)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before finishing its head
            self._forget(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.head += data
        if _END_OF_HEAD in conn.head or len(conn.head) > MAX_HEAD_BYTES:
            self._forget(conn)
            conn.data_ready = True  # gthread's own wait for data is over too
            self.enqueue_req(conn)

    def _forget(self, conn: Any) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
