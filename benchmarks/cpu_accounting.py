"""Where a request's CPU goes, for bench_small_requests.py --profile.

Two measurements over one wrk run:
- every process's CPU time (/proc/PID/stat): the service's workers, Redis, PostgreSQL's
  backends, wrk, per request;
- py-spy sampling the workers (threads holding the GIL only, so CPU rather than
  waiting): each sample goes to the component of its innermost frame that has one, and
  the workers' CPU time is split in the samples' proportions.
"""

import collections
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"
RATE = 250  # samples per second per process
TICKS = os.sysconf("SC_CLK_TCK")

# (component, the beginnings of the file paths that are its own), as py-spy names files:
# relative to site-packages, or to the directory the server runs in.
COMPONENTS = [
    ("rate limit (Redis call)", ("identity/limits.py", "identity/idle.py", "redis/", "hiredis/")),
    ("database read", ("identity/storage/", "psycopg", "sqlalchemy/", "flask_sqlalchemy/",
                       "sqlite3/")),
    ("signing", ("signedjson/", "nacl/", "canonicaljson", "identity/keys.py")),
    ("routing rules", ("identity/routing/",)),
    ("token and caller checks", ("identity/api/auth.py", "identity/accounts.py")),
    ("metrics", ("identity/metrics.py", "prometheus_client/")),
    ("access log (both apps: gunicorn.conf.py's logger)",
     ("identity/logs.py", "logging/", "pythonjsonlogger/", "gunicorn/glogging")),
    ("our views, domain code and hooks", ("identity/", "app.py")),
    ("the bare app's view", ("benchmarks/bare_app.py",)),
    ("Flask and Werkzeug (routing, request, response)", ("flask/", "werkzeug/", "json/")),
    ("gunicorn (HTTP parsing, socket)", ("gunicorn/",)),
]  # fmt: skip
OTHER = "other (threads, selectors, interpreter)"


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pids_of(name: str) -> list[int]:
    """Processes whose command line starts with `name` (redis-server, postgres)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if os.path.basename(command).startswith(name) or command.startswith(name):
                found.append(int(entry.name))
    return found


def total_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # ended meanwhile
            total += cpu_seconds(pid)
    return total


def profile(workers: list[int], run: Callable[[], dict], seconds: float, out: Path) -> dict:
    """Run `run` (a wrk run) while measuring; µs per request by process and component."""
    groups = {"workers": workers, "redis-server": pids_of("redis-server"),
              "postgres": pids_of("postgres")}  # fmt: skip
    before = {name: total_cpu(pids) for name, pids in groups.items()}
    spies = [
        subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(seconds)),
                "-r",
                str(RATE),
                "--gil",
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                str(out / f"{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for pid in workers
    ]
    result = run()
    for spy in spies:
        spy.wait()
    requests = result["requests"]
    processes = {
        name: (total_cpu(pids) - before[name]) / requests * 1e6 for name, pids in groups.items()
    }
    samples: collections.Counter = collections.Counter()
    for pid in workers:
        path = out / f"{pid}.txt"
        if path.exists():
            samples.update(_components(path))
    total = sum(samples.values()) or 1
    components = {name: n / total * processes["workers"] for name, n in samples.items()}
    return {"processes": processes, "components": components, "rps": result["rps"]}


def _components(path: Path) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        counts[_component(stack.split(";"))] += int(n)
    return counts


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):  # root first in py-spy's lines
        path = frame[frame.rfind("(") + 1 : frame.rfind(":")]
        path = path.rpartition("site-packages/")[2].removeprefix(os.getcwd() + "/")
        for name, beginnings in COMPONENTS:
            if path.startswith(beginnings):
                return name
    return OTHER
