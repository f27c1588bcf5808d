"""Server processes end with the test that started them, on every path.

A server's stop ends its whole process group, what its leader left behind included; a
session ended by SIGTERM stops its servers as Ctrl-C does; a process still running once
the fixtures are torn down fails the session (tests/leftovers.py).
"""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from testing.processes import ServerProcess
from testing.processes import leftover_processes
from testing.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent
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
    # Session-wide servers (Synapse, the browser's driver) may run already.
    running_before = set(leftover_processes())
    server = ServerProcess([sys.executable, "-c", LEADER_AND_CHILD], cwd=tmp_path,
                           env=os.environ, what="a leader and its child")  # fmt: skip
    server.start(lambda: children(server.pid))
    [child] = children(server.pid)
    try:
        server.stop()
        assert not is_running(child, "os.fork()")
        assert set(leftover_processes()) <= running_before
    finally:
        kill_if_running(child, "os.fork()")


def run_pytest(tmp_path: Path, test_file: str, **env: str) -> subprocess.Popen:
    """A pytest session of its own on `test_file`, with this suite's process guard."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test_file))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "tests.leftovers", "--rootdir", str(tmp_path), str(tmp_path)]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def test_a_session_ended_by_sigterm_stops_its_servers(tmp_path):
    pid_file = tmp_path / "server.pid"
    session = run_pytest(tmp_path, """
        import os, sys, time
        from pathlib import Path
        import pytest
        from testing.processes import ServerProcess

        @pytest.fixture(scope="session")
        def server():
            command = [sys.executable, "-c", "import time; time.sleep(301)"]
            server = ServerProcess(command, cwd=Path.cwd(), env=os.environ, what="a sleeper")
            yield server.start(lambda: True)
            server.stop()

        def test_runs_until_the_session_is_ended(server):
            Path(os.environ["SERVER_PID_FILE"]).write_text(str(server.pid))
            time.sleep(120)
    """, SERVER_PID_FILE=str(pid_file))  # fmt: skip
    server = None
    try:
        wait_until(pid_file.exists, timeout=60, interval=0.05, what="the inner session's server")
        server = int(pid_file.read_text())
        session.send_signal(signal.SIGTERM)
        output, _ = session.communicate(timeout=60)
        assert "SIGTERM received" in output, output
        assert not is_running(server, "time.sleep(301)"), output
    finally:
        session.kill()
        session.communicate()
        if server is not None:
            kill_if_running(server, "time.sleep(301)")


def test_a_process_left_running_fails_the_session(tmp_path):
    session = run_pytest(tmp_path, """
        import subprocess, sys

        def test_forgets_its_process():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(302)"])
    """)  # fmt: skip
    try:
        output, _ = session.communicate(timeout=60)
    finally:
        session.kill()
    assert session.returncode == 1, output
    assert "1 passed" in output, output
    assert "were still running (now killed)" in output and "time.sleep(302)" in output, output
    left = [line.split()[0] for line in output.splitlines() if "time.sleep(302)" in line]
    assert left and not any(is_running(int(pid), "time.sleep(302)") for pid in left)
