"""Dependencies the fault-injection tests break on purpose: a PostgreSQL cluster and a
Redis of their own on spare ports, an SMTP server that never answers, a small tmpfs.

Never the shared servers (5432, 6379): other test runs use them. Each piece can be
stopped, frozen (SIGSTOP: the kernel still accepts connections, nothing answers) and
started again on the same port and data, and leaves nothing behind on any path: the
servers are ServerProcesses (stopped at exit at the latest), the mounts are undone at
exit too.
"""

import asyncio
import atexit
import contextlib
import glob
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
import redis

from testing.processes import OWNER
from testing.processes import OWNER_VARIABLE
from testing.processes import ServerProcess
from testing.processes import free_port
from testing.smtp import SmtpSink

# -- PostgreSQL ----------------------------------------------------------------------------


def _which(program: str) -> str:
    """The full path of a program on PATH."""
    path = shutil.which(program)
    if path is None:
        raise FileNotFoundError(f"{program} is not installed")
    return path


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, postgres): the newest installed."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda path: int(Path(path).parts[-3]))  # fmt: skip
    if found:
        return found[-1]
    return _which(name)


def postgres_installed() -> bool:
    try:
        _postgres_bin("initdb")
        _postgres_bin("postgres")
    except FileNotFoundError:
        return False
    return True


class _AsUser(ServerProcess):
    """A ServerProcess run as another user, itself the leader of its process group (no
    runuser between us and it: the pid we signal is the server's)."""

    def __init__(self, *args, user: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = pwd.getpwnam(user)

    def _popen(self, output: IO | int) -> subprocess.Popen:
        return subprocess.Popen(
            self.command, cwd=self.cwd, env={**self.env, OWNER_VARIABLE: OWNER}, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True, user=self.user.pw_uid,
            group=self.user.pw_gid, extra_groups=[],
        )  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


class PostgresCluster:
    """A throwaway PostgreSQL cluster: its data and socket in a temporary folder owned by
    `postgres` (the server refuses to run as root), trust authentication, 127.0.0.1 on a
    spare port.

    `stop()` is a fast shutdown (clients are disconnected, connections then refused),
    `freeze()` pauses the postmaster and every backend (SIGSTOP: each backend is its own
    process group, so each is signalled), `start()` brings it back on the same data.
    """

    user = "postgres"

    def __init__(self, *, port: int | None = None) -> None:
        _clusters.add(self)
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="identity-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.server: _AsUser | None = None
        self.frozen: list[int] = []
        account = pwd.getpwnam(self.user)
        os.chown(self.root, account.pw_uid, account.pw_gid)
        subprocess.run(
            [_which("runuser"), "-u", self.user, "--", _postgres_bin("initdb"), "--no-sync",
             "--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C.UTF-8",
             "-D", str(self.data)],
            check=True, capture_output=True, cwd=self.root,
        )  # fmt: skip

    def url(self, database: str = "postgres", *, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", **options) -> psycopg.Connection:
        return psycopg.connect(self.url(database, driver="postgresql"), connect_timeout=3,
                               **options)  # fmt: skip

    def accepts(self) -> bool:
        """Whether the server accepts connections and answers a query now."""
        try:
            with self.connect() as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.poll() is None

    def start(self) -> "PostgresCluster":
        """Start the server (again, on the same data and port) and wait until it answers."""
        assert not self.running, "PostgreSQL already runs"
        command = [
            _postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=300", "-c", "fsync=off", "-c", "shared_buffers=32MB",
            "-c", "log_min_messages=warning",
        ]  # fmt: skip
        self.server = _AsUser(command, cwd=self.root, env=os.environ, log=self.log,
                              what="PostgreSQL", user=self.user)  # fmt: skip
        self.server.start(self.accepts, timeout=60)
        return self

    def stop(self) -> None:
        """Fast shutdown: sessions are ended, their transactions rolled back; then nothing
        listens on the port. Immediate (SIGQUIT), then SIGKILL, if it lingers."""
        if not self.running:
            return
        assert self.server is not None and self.server.process is not None
        self.thaw()
        process = self.server.process
        for signum, patience in ((signal.SIGINT, 30), (signal.SIGQUIT, 10)):
            process.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=patience)
                break
        self.server.kill()  # what would remain of its process group
        self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        if not self.running:
            return []
        assert self.server is not None
        return [self.server.pid, *_children(self.server.pid)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster first (it forks no more), then each of its children."""
        assert self.running and not self.frozen, "PostgreSQL is not running, or frozen already"
        assert self.server is not None
        os.kill(self.server.pid, signal.SIGSTOP)
        self.frozen = [self.server.pid]
        for child in _children(self.server.pid):
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(child, signal.SIGSTOP)
                self.frozen.append(child)

    def thaw(self) -> None:
        for pid in reversed(self.frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database (a copy of `template`, when given); its SQLAlchemy URL."""
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.connect(autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        """Stop the server and remove its data."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            _clusters.discard(self)


# Clusters not destroyed yet: stopped at exit whatever skipped it, before testing.processes
# stops what remains (a SIGTERM there would wait for clients: a smart shutdown).
_clusters: set[PostgresCluster] = set()


@atexit.register
def _destroy_clusters() -> None:
    for cluster in list(_clusters):
        with contextlib.suppress(Exception):  # on to the next one
            cluster.destroy()


# -- Redis -----------------------------------------------------------------------------------


class RedisServer:
    """A throwaway redis-server on a spare loopback port that keeps nothing on disk."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.root = Path(tempfile.mkdtemp(prefix="identity-faults-redis-"))
        self.server: ServerProcess | None = None
        self.frozen = False

    def accepts(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                             socket_connect_timeout=1)  # fmt: skip
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.poll() is None

    def start(self) -> "RedisServer":
        assert not self.running, "Redis already runs"
        command = [
            _which("redis-server"), "--port", str(self.port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.root),
        ]  # fmt: skip
        self.server = ServerProcess(command, cwd=self.root, env=os.environ,
                                    log=self.root / "redis.log", what="redis-server")  # fmt: skip
        self.server.start(self.accepts, timeout=30)
        return self

    def stop(self) -> None:
        if self.server is None:
            return
        self.thaw()
        self.server.stop(timeout=10)
        self.server = None

    def freeze(self) -> None:
        assert self.running and not self.frozen, "Redis is not running, or frozen already"
        assert self.server is not None
        os.kill(self.server.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server.pid, signal.SIGCONT)
        self.frozen = False

    def flush(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=3)
        try:
            client.flushall()
        finally:
            client.close()

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# -- An SMTP server that never answers -----------------------------------------------------


class HangingSmtp:
    """A TCP listener that accepts every connection and never says a word (no 220
    greeting): a mail server stuck in its own troubles. Counts the connections open at
    once (`peak`), which is how many requests were waiting on it together."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.accepted = 0
        self.peak = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "HangingSmtp":
        self._listener = socket.create_server((self.host, 0), backlog=128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="hanging-smtp", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            connection, _ = self._listener.accept()
            connection.setblocking(False)
            self._selector.register(connection, selectors.EVENT_READ)
            with self._lock:
                self._open.add(connection)
                self.accepted += 1
                self.peak = max(self.peak, len(self._open))

    def _read(self, connection: socket.socket) -> None:
        try:
            data = connection.recv(4096)
        except OSError:
            data = b""
        if not data:  # the client gave up: it waits no more
            self._selector.unregister(connection)
            connection.close()
            with self._lock:
                self._open.discard(connection)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for connection in self._open:
                connection.close()
            self._open.clear()
        self._selector.close()
        self._listener.close()


@dataclass
class SlowSmtp(SmtpSink):
    """An SMTP sink that takes `delay` seconds to accept each message: requests that
    send a mail stay in flight that long."""

    delay: float = 3.0

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


# -- A small tmpfs -------------------------------------------------------------------------


class MountRefused(RuntimeError):
    """This process may not mount a tmpfs (not root, or no CAP_SYS_ADMIN in a container)."""


_mounted: set[Path] = set()


@atexit.register
def _unmount_all() -> None:
    for directory in list(_mounted):
        with contextlib.suppress(Exception):
            _unmount(directory)


def _unmount(directory: Path) -> None:
    done = subprocess.run([_which("umount"), str(directory)], capture_output=True, check=False)
    if done.returncode != 0:  # busy: detach now, freed when the last file closes
        subprocess.run([_which("umount"), "-l", str(directory)], capture_output=True, check=True)
    _mounted.discard(directory)
    directory.rmdir()


@contextlib.contextmanager
def tmpfs(size: str = "16m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on a new temporary folder, unmounted afterwards.

    :raises MountRefused: when mounting is not allowed here.
    """
    directory = Path(tempfile.mkdtemp(prefix="identity-tmpfs-"))
    done = subprocess.run(
        [_which("mount"), "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        directory.rmdir()
        raise MountRefused(f"cannot mount a tmpfs: {(done.stderr or done.stdout).strip()}")
    _mounted.add(directory)
    try:
        yield directory
    finally:
        _unmount(directory)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until its file system is full; return the file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):  # then the last blocks, smaller ones
            with contextlib.suppress(OSError):  # ENOSPC: full, which is the point
                while True:
                    out.write(b"\0" * size)
    return filler
