"""Servers run as subprocesses: started, polled until ready with a deadline, stopped."""

import contextlib
import os
import signal
import socket
import subprocess
import time
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


class ServerNotReady(RuntimeError):
    """The server exited, or did not become ready in time; the message ends with its log."""


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
            self.command, cwd=self.cwd, env=self.env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

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
        """SIGKILL the whole process group at once (a master and its workers)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # already gone, children included
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL to the process group if it has not exited within `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
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
