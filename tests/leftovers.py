"""No server outlives the session: a pytest plugin (tests/conftest.py loads it).

Servers run in process groups and sessions of their own (testing/processes.py), out of
reach of the signals that end pytest. On Ctrl-C pytest tears its fixtures down, which
stops them; SIGTERM (a CI job's timeout, `kill`) would end it at once and leave them
running for good: it ends the session as Ctrl-C does. (SIGHUP stays the app's: it
reloads the domains file, and a test sends it to this process.) Once every fixture is
torn down, a process a test started that still runs fails the session, and is killed.
"""

import contextlib
import os
import signal

import pytest

from testing.processes import leftover_processes


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def pytest_sessionstart(session: pytest.Session) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session):
    try:
        return (yield)  # the fixtures' teardown (the runner's pytest_sessionfinish)
    finally:
        _kill_leftovers(session)


def _kill_leftovers(session: pytest.Session) -> None:
    left = leftover_processes()
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):  # its master took it along
            os.kill(pid, signal.SIGKILL)
    if not left:
        return
    message = "processes started by the tests were still running (now killed):"
    lines = [f"{pid} {command[:200]}" for pid, command in left]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", message, red=True, bold=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print(message, *lines, sep="\n")
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
