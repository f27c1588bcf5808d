"""Server processes end with the test that started them, on every path.

A server's stop ends its whole process group, what its leader left behind included.
"""

import contextlib
import os
import signal
import sys
from pathlib import Path

from testing.processes import ServerProcess
from testing.processes import leftover_processes

# A leader that forks a child, as a gunicorn master its workers, and dies on SIGTERM
# without stopping it: a master killed before it installed its signal handlers.
LEADER_AND_CHILD = "import os, time\nos.fork()\ntime.sleep(300)\n"


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def is_running(pid: int, marker: str) -> bool:
    """Whether `pid` runs still, and is the process whose command line holds `marker`."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return state != "Z" and marker in command


def kill_if_running(pid: int, marker: str) -> None:
    if is_running(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_stop_ends_what_the_leader_left_behind(tmp_path):
    server = ServerProcess([sys.executable, "-c", LEADER_AND_CHILD], cwd=tmp_path,
                           env=os.environ, what="a leader and its child")  # fmt: skip
    server.start(lambda: children(server.pid))
    [child] = children(server.pid)
    try:
        server.stop()
        assert not is_running(child, "os.fork()")
        assert leftover_processes() == []
    finally:
        kill_if_running(child, "os.fork()")
