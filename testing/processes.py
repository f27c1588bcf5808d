"""Servers run as subprocesses: started, polled until ready with a deadline, stopped.

Each server runs in a process group of its own, so that it is stopped with whatever it
started (gunicorn's workers). Every process started here, and every child of theirs,
carries OWNER_VARIABLE in its environment: `leftover_processes()` finds those still
running, even once their parent is gone, and never mistakes another program's for ours.
"""

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import IO
from typing import Any

import requests


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2,
               what: str) -> Any:  # fmt: skip
    """Call `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def answers(url: str, *, status: int | None = 200, verify: str | bool = True,
            timeout: float = 2) -> Callable[[], bool]:  # fmt: skip
    """A readiness check: `url` answers (with `status`, or with any status when None)."""

    def check() -> bool:
        try:
            response = requests.get(url, verify=verify, timeout=timeout)
        except requests.RequestException:  # not listening yet, or busy starting
            return False
        return status is None or response.status_code == status

    return check


# The environment variable, and its value for this process, that mark what it started.
OWNER_VARIABLE = "TESTING_PROCESS_OWNER"
OWNER = f"{os.getpid()}-{uuid.uuid4().hex}"


class ServerNotReady(RuntimeError):
    """The server exited, or did not become ready in time; the message ends with its log."""


def _stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent, process group) of a process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself.
    state, parent, group = stat[stat.rindex(")") + 2 :].split()[:3]
    return state, int(parent), int(group)


def _is_ours(pid: int | str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{OWNER_VARIABLE}={OWNER}".encode() in f.read().split(b"\0")
    except OSError:  # gone, or another user's
        return False


def _command_line(pid: int | str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def leftover_processes() -> list[tuple[int, str]]:
    """(pid, command line) of the processes still running that this process started:
    its children, and everything a ServerProcess started (workers whose master is gone
    included). Zombies, dead already, are left out."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        stat = _stat(entry)
        if stat is None or stat[0] == "Z":
            continue
        if stat[1] == os.getpid() or _is_ours(entry):
            found.append((int(entry), _command_line(entry)))
    return sorted(found)


def _group_alive(group: int) -> bool:
    """Whether a process of ours still runs in process group `group`."""
    for entry in os.listdir("/proc"):
        stat = _stat(entry) if entry.isdigit() else None
        if stat is not None and stat[0] != "Z" and stat[2] == group and _is_ours(entry):
            return True
    return False


# The servers started and not stopped yet: stopped when the interpreter exits, whatever
# skipped their own stop (an interrupted teardown, a script that failed).
_running: set["ServerProcess"] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):  # on to the next one
            server.stop(timeout=5)


class ServerProcess:
    """A command run in its own process group, its output appended to `log`.

    :param log: a file (opened for appending), an open file object, or None (no output).
    :param what: the server's name in error messages.
    :param also_show: other log files whose end goes into error messages.
    """

    def __init__(self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str],
                 log: Path | IO | None = None, what: str = "the server",
                 also_show: Sequence[Path] = ()) -> None:  # fmt: skip
        self.command, self.cwd, self.env = list(command), cwd, dict(env)
        self.log, self.what, self.also_show = log, what, tuple(also_show)
        self.process: subprocess.Popen | None = None

    def start(self, ready: Callable[[], Any], *, timeout: float = 60,
              interval: float = 0.1) -> "ServerProcess":  # fmt: skip
        """Start the command, then poll `ready` until it is truthy; stop it and raise
        ServerNotReady if it exits first or `timeout` seconds pass."""
        if isinstance(self.log, Path):
            with self.log.open("ab") as output:
                self.process = self._popen(output)
        else:
            self.process = self._popen(subprocess.DEVNULL if self.log is None else self.log)
        _running.add(self)
        try:
            self._wait_until_ready(ready, timeout, interval)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, ready: Callable[[], Any], timeout: float, interval: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                problem = f"{self.what} exited with {self.process.returncode}"
            elif time.monotonic() > deadline:
                problem = f"{self.what} was not ready within {timeout} s"
            else:
                time.sleep(interval)
                continue
            raise ServerNotReady(f"{problem}:\n{self.log_tail()}")

    def _popen(self, output: IO | int) -> subprocess.Popen:
        return subprocess.Popen(
            self.command, cwd=self.cwd, env={**self.env, OWNER_VARIABLE: OWNER}, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.what} is not started"
        return self.process.pid

    def poll(self) -> int | None:
        """None while the process runs, else its exit status."""
        assert self.process is not None, f"{self.what} is not started"
        return self.process.poll()

    def signal(self, signum: int) -> None:
        assert self.process is not None, f"{self.what} is not started"
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a master and its workers), and wait
        until none of it runs."""
        if self.process is None:
            return
        group = self.process.pid
        # The group's number cannot name another group while the leader is not reaped
        # (poll() is None) or while a process of ours is still in the group.
        if self.process.poll() is None or _group_alive(group):
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=10)
        wait_until(lambda: not _group_alive(group), timeout=10, interval=0.05,
                   what=f"{self.what}'s processes to end")  # fmt: skip
        _running.discard(self)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the leader (a gunicorn master stops its workers gracefully), then
        SIGKILL to what remains of its process group: all of it if the leader has not
        exited within `timeout`, else what it left behind (a master that exited before
        its workers, or was killed before it could stop them)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()

    def log_tail(self, size: int = 3000) -> str:
        """The end of the log file(s), for error messages."""
        files = ([self.log] if isinstance(self.log, Path) else []) + list(self.also_show)
        return "\n".join(_tail(path, size) for path in files)


def _tail(path: Path, size: int) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""
